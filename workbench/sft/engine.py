"""Supervised fine-tuning: chat JSONL + checkpoint in, fine-tuned checkpoint out.

``run`` checks everything it can before writing anything (config, base checkpoint, data, LoRA
targets, the output directory), then trains with the shared loop and writes OUT as a
checkpoint: merged full weights (``save_model``), plus the peft adapter in OUT/adapter when
LoRA was used. OUT also holds the run itself (see ``workbench.training.rundir``).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import torch

from workbench import atomic
from workbench.checkpoint import Checkpoint, file_fingerprint, make_lineage
from workbench.errors import ConfigError
from workbench.sft.config import ADAPTER_DIR, SFTConfig
from workbench.sft.lora import apply_lora, unsharded_lora_copy
from workbench.training.distributed import barrier, setup
from workbench.training.events import plot_loss_curve
from workbench.training.fsdp import check_fsdp_launch, empty_model
from workbench.training.loop import train
from workbench.training.objectives import causal_lm_objective
from workbench.training.rundir import begin_run, check_run_dir, write_final_model


def run(config: SFTConfig) -> Checkpoint:
    """Fine-tune ``config.model`` on ``config.dataset.data`` into ``config.out``; return the checkpoint."""
    from workbench.data import pack_examples, packed_collate, pad_collate, prepare_datasets
    from workbench.modeling import load_model, load_tokenizer, pad_token_id

    config.validate()
    ctx = setup()
    check_fsdp_launch(config.train, ctx)
    base = Checkpoint(config.model)
    out = Path(config.out)
    if out.resolve() == base.path.resolve():
        raise ConfigError(f"--out {out} is the base model's directory; write the fine-tuned model elsewhere")
    identity = {**config.run_identity(), "model_fingerprint": base.fingerprint(),
                "data_fingerprint": _fingerprint(config.dataset.data),
                "val_data_fingerprint": _fingerprint(config.dataset.val_data)}
    status = check_run_dir(out, identity, resume=config.train.resume, overwrite=config.train.overwrite)
    if status == "done":
        return Checkpoint(out)

    tokenizer = load_tokenizer(base.path)
    train_examples, val_examples, stats = prepare_datasets(
        config.dataset.data, tokenizer, config.train.max_length, val_path=config.dataset.val_data,
        val_split=config.dataset.val_split, seed=config.train.seed, truncation=config.dataset.truncation)
    if config.train.packing:
        train_rows = pack_examples(train_examples, config.train.max_length)
        val_rows = pack_examples(val_examples, config.train.max_length)
        collate = partial(packed_collate, pad_id=pad_token_id(tokenizer))
    else:
        train_rows, val_rows = train_examples, val_examples
        collate = partial(pad_collate, pad_id=pad_token_id(tokenizer))

    torch.manual_seed(config.train.seed)  # the same LoRA initialization on every rank and every resume
    if config.train.fsdp and not config.lora_rank:  # each rank reads only its shards
        model = empty_model(base.path, torch.float32)
    else:  # LoRA under FSDP: the whole base per rank while peft wraps it, then sharded
        model = load_model(base.path, dtype=torch.float32)
    if config.lora_rank:
        model = apply_lora(model, config.lora_rank, config.lora_alpha, config.lora_dropout, config.target_modules)

    begin_run(out, identity, status, ctx, fsdp=config.train.fsdp, overwrite=config.train.overwrite)
    result = train(model, train_rows, val_rows, collate, config.train, out, ctx, causal_lm_objective)
    if config.train.fsdp and config.lora_rank:
        model = unsharded_lora_copy(model, base, config, ctx)  # rank 0 merges and writes as without FSDP
    lineage = None
    if ctx.is_main:
        plot_loss_curve(out)
        lineage = make_lineage(
            "sft", parameters=config.run_identity(),
            inputs={"base": base, "data": config.dataset.data,
                    **({"val_data": config.dataset.val_data} if config.dataset.val_data else {})},
            metrics={**result.metrics, "data": stats.to_dict()})
        if config.lora_rank:
            write_adapter(model, out)
            model = model.merge_and_unload()
    if model is not None:
        write_final_model(model, out, base, lineage, ctx)
    barrier(ctx)
    return Checkpoint(out)


def _fingerprint(path: str | None) -> str | None:
    return file_fingerprint(path) if path and os.path.isfile(path) else None


def write_adapter(model, out: Path) -> None:
    """The peft adapter as OUT/adapter, written beside it and renamed into place."""
    with atomic.staged_dir(out / ADAPTER_DIR) as staging:
        model.save_pretrained(str(staging))
