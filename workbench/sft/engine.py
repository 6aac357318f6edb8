"""Supervised fine-tuning: chat JSONL + checkpoint in, fine-tuned checkpoint out.

``run`` checks everything it can before writing anything (config, base checkpoint, data, LoRA
targets, the output directory), then trains with the shared loop and writes OUT as a
checkpoint: merged full weights (``save_model``), plus the peft adapter in OUT/adapter when
LoRA was used. OUT also holds the run itself: run.json (what defines the run, so re-running
the same command resumes or returns the finished result), events.jsonl, loss.png and
checkpoints/.
"""

from __future__ import annotations

import json
import os
import shutil
from functools import partial
from pathlib import Path

import torch

from workbench.checkpoint import CONFIG_FILE, Checkpoint, file_fingerprint, make_lineage, parse_dtype, save_model
from workbench.errors import ConfigError
from workbench.sft.config import SFTConfig
from workbench.sft.lora import apply_lora
from workbench.training import causal_lm_objective, setup_distributed, train
from workbench.training.distributed import Dist, barrier
from workbench.training.events import plot_loss_curve

RUN_FILE = "run.json"
ADAPTER_DIR = "adapter"


def run(config: SFTConfig) -> Checkpoint:
    """Fine-tune ``config.model`` on ``config.data`` into ``config.out``; return the checkpoint."""
    from workbench.data import pack_examples, packed_collate, pad_collate, prepare_datasets
    from workbench.modeling import load_model, load_tokenizer

    config.validate()
    ctx = setup_distributed()
    base = Checkpoint(config.model)
    out = Path(config.out)
    identity = {**config.run_identity(), "model_fingerprint": base.fingerprint(),
                "data_fingerprint": _fingerprint(config.data), "val_data_fingerprint": _fingerprint(config.val_data)}
    status = check_run_dir(out, identity, config)
    if status == "done":
        return Checkpoint(out)

    tokenizer = load_tokenizer(base.path)
    train_examples, val_examples, stats = prepare_datasets(
        config.data, tokenizer, config.max_length, val_path=config.val_data, val_split=config.val_split,
        seed=config.seed, truncation=config.truncation)
    if config.packing:
        train_rows, val_rows = pack_examples(train_examples, config.max_length), pack_examples(val_examples, config.max_length)
        collate = partial(packed_collate, pad_id=tokenizer.pad_token_id or 0)
    else:
        train_rows, val_rows = train_examples, val_examples
        collate = partial(pad_collate, pad_id=tokenizer.pad_token_id or 0)

    torch.manual_seed(config.seed)  # the same LoRA initialization on every rank and every resume
    model = load_model(base.path, dtype=torch.float32)
    if config.lora_rank:
        model = apply_lora(model, config.lora_rank, config.lora_alpha, config.lora_dropout, config.target_modules)

    barrier(ctx)  # every rank has checked its inputs; only now is anything written
    if ctx.is_main:
        start_run_dir(out, identity, status, config.overwrite)
    barrier(ctx)
    result = train(model, train_rows, val_rows, collate, config, out, ctx, causal_lm_objective)
    if ctx.is_main:
        plot_loss_curve(out)
        lineage = make_lineage(
            "sft", parameters=config.run_identity(),
            inputs={"base": base, "data": config.data, **({"val_data": config.val_data} if config.val_data else {})},
            metrics={**result.metrics, "data": stats.to_dict()})
        write_final_model(model, out, base, lineage, lora=bool(config.lora_rank))
    barrier(ctx)
    if ctx.enabled:
        torch.distributed.destroy_process_group()
    return Checkpoint(out)


def _fingerprint(path: str | None) -> str | None:
    return file_fingerprint(path) if path and os.path.isfile(path) else None


def check_run_dir(out: Path, identity: dict, config: SFTConfig) -> str:
    """'new', 'continue' (resume from OUT/checkpoints) or 'done' (OUT holds this finished run).

    A directory holding something else, or a run with other settings, is refused unless
    --overwrite (start over) or --resume (continue that run with these settings)."""
    if not out.exists():
        return "new"
    if not out.is_dir():
        raise ConfigError(f"{out}: exists and is a file, expected an output directory")
    if config.overwrite or not any(out.iterdir()):
        return "new"
    run_file = out / RUN_FILE
    if not run_file.exists():
        raise ConfigError(f"{out}: exists and holds something other than an sft run; "
                          "pass --overwrite to replace it")
    recorded = json.loads(run_file.read_text())
    if recorded != identity and not config.resume:
        changed = sorted(k for k in recorded.keys() | identity.keys() if recorded.get(k) != identity.get(k))
        raise ConfigError(f"{out}: holds a different run (differs in {', '.join(changed)}); pass --resume "
                          "to continue it with these settings or --overwrite to start over")
    if recorded == identity and (out / CONFIG_FILE).exists():
        return "done"
    return "continue"


def start_run_dir(out: Path, identity: dict, status: str, overwrite: bool) -> None:
    if status == "new" and overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).unlink(missing_ok=True)  # OUT is a checkpoint again only once training is done
    (out / RUN_FILE).write_text(json.dumps(identity, indent=2) + "\n")


def write_final_model(model, out: Path, base: Checkpoint, lineage: dict, *, lora: bool) -> None:
    """OUT becomes a checkpoint: full (merged) weights in the base model's dtype, tokenizer and
    chat template copied from the base, lineage; with LoRA also OUT/adapter in peft format. Files are written
    beside OUT and moved in with config.json last, so OUT never looks like a partial checkpoint."""
    staging = out.parent / f".{out.name}.final-{os.getpid()}"
    if lora:
        adapter_tmp = staging.with_name(staging.name + "-adapter")
        shutil.rmtree(adapter_tmp, ignore_errors=True)
        model.save_pretrained(str(adapter_tmp))
        shutil.rmtree(out / ADAPTER_DIR, ignore_errors=True)
        os.rename(adapter_tmp, out / ADAPTER_DIR)
        model = model.merge_and_unload()
    dtype = parse_dtype(base.config.get("dtype") or base.config.get("torch_dtype") or "float32")
    save_model(model, staging, lineage=lineage, support_from=base.path, dtype=dtype, overwrite=True)
    files = sorted(staging.iterdir(), key=lambda p: p.name == CONFIG_FILE)
    for path in files:
        os.replace(path, out / path.name)
    staging.rmdir()
