"""`workbench sft`: supervised fine-tuning, full or LoRA."""

from __future__ import annotations

import click

from workbench.commands.config_options import config_from_cli, config_options
from workbench.console import log
from workbench.sft.config import SFTConfig


@click.command("sft")
@config_options(SFTConfig)
def sft(config_file: str | None, **given) -> None:
    """Fine-tune a checkpoint on chat data; OUT becomes a checkpoint (LoRA merged, adapter in OUT/adapter).

    Re-running the same command resumes an interrupted run. Data-parallel:
    torchrun --nproc_per_node=N -m workbench sft ... [--fsdp]
    """
    from workbench import sft as engine

    config = config_from_cli(SFTConfig, config_file, given)
    checkpoint = engine.run(config)
    metrics = (checkpoint.lineage or {}).get("metrics", {})
    summary = ", ".join(f"{key} {metrics[key]:.4f}" for key in ("train_loss", "valid_loss") if key in metrics)
    log(f"wrote {checkpoint.path}" + (f" ({summary})" if summary else ""))
