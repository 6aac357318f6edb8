"""`workbench sft`: supervised fine-tuning, full or LoRA."""

from __future__ import annotations

import os

import click

from workbench.commands.config_options import config_from_cli, config_options
from workbench.sft.config import SFTConfig

HELP = {
    "model": "Base checkpoint directory.",
    "data": "Training data: chat JSONL ({'messages': [...]}) or prompt/completion JSONL.",
    "out": "Output directory: the fine-tuned checkpoint plus events, loss.png, checkpoints/.",
    "val_data": "Validation JSONL (default: hold out --val-split of --data).",
    "val_split": "Share of --data held out for validation when no --val-data.",
    "truncation": "Examples longer than --max-length: truncate | drop.",
    "epochs": "Passes over the training data.",
    "batch_size": "Examples (or packed rows) per forward pass and process.",
    "grad_accum": "Forward passes per optimizer step (step = batch x accum x processes).",
    "lr": "Peak learning rate.",
    "warmup_ratio": "Warmup as a share of all steps.",
    "warmup_steps": "Warmup steps (wins over --warmup-ratio).",
    "schedule": "Learning-rate decay after warmup: cosine | linear | constant.",
    "weight_decay": "AdamW weight decay (not on biases and norms).",
    "max_grad_norm": "Gradient clipping norm (0: off).",
    "max_length": "Tokens per example (and per packed row).",
    "seed": "Seed for shuffling, the validation split, LoRA init and dropout.",
    "precision": "auto (bf16 on a GPU that has it) | bf16 (autocast) | fp32.",
    "packing": "Pack several examples per row (attention stays within each example).",
    "fsdp": "Shard model, gradients and optimizer state over torchrun's processes (FSDP2) instead "
            "of replicating them (docs/distributed.md).",
    "eval_every": "Also validate every N steps (0: only at epoch ends).",
    "save_every": "Also checkpoint every N steps (0: only at epoch ends and new best).",
    "keep_last": "Training checkpoints kept (the best is kept too).",
    "patience": "Stop after N validations without improvement (0: never).",
    "max_steps": "Stop after N steps (0: run all epochs).",
    "resume": "Continue the run in --out even if its settings differ.",
    "overwrite": "Delete --out and start over.",
    "progress": "Show a progress bar.",
    "lora_rank": "LoRA rank (0: full fine-tuning).",
    "lora_alpha": "LoRA alpha (scale = alpha / rank).",
    "lora_targets": "Comma-separated module names, or all-linear.",
    "lora_dropout": "Dropout on the LoRA input.",
}


@click.command("sft")
@config_options(SFTConfig, HELP)
def sft(config_file: str | None, **given) -> None:
    """Fine-tune a checkpoint on chat data; OUT becomes a checkpoint (LoRA merged, adapter in OUT/adapter).

    Re-running the same command resumes an interrupted run. Data-parallel:
    torchrun --nproc_per_node=N -m workbench sft ... [--fsdp]
    """
    from workbench import sft as engine

    config = config_from_cli(SFTConfig, config_file, given)
    checkpoint = engine.run(config)
    if os.environ.get("RANK", "0") == "0":
        metrics = (checkpoint.lineage or {}).get("metrics", {})
        summary = ", ".join(f"{key} {metrics[key]:.4f}" for key in ("train_loss", "valid_loss") if key in metrics)
        click.echo(f"wrote {checkpoint.path}" + (f" ({summary})" if summary else ""))
