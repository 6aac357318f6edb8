"""The output directory of a training run (sft, distill): identity, resume, final checkpoint.

OUT holds the run (run.json: the settings and input fingerprints that define it; events.jsonl;
checkpoints/) and, once training is done, the trained model as a checkpoint. Re-running the
same command resumes an interrupted run or returns the finished one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from workbench.checkpoint import CONFIG_FILE, Checkpoint, parse_dtype, save_model
from workbench.errors import ConfigError
from workbench.training.config import TrainingConfig

RUN_FILE = "run.json"
ADAPTER_DIR = "adapter"


def check_run_dir(out: Path, identity: dict, config: TrainingConfig, run_name: str) -> str:
    """'new', 'continue' (resume from OUT/checkpoints) or 'done' (OUT holds this finished run).

    A directory holding something else, or a run with other settings, is refused unless
    --overwrite (start over) or --resume (continue that run with these settings).
    ``run_name`` says what OUT should hold ("an sft run") in that message."""
    if not out.exists():
        return "new"
    if not out.is_dir():
        raise ConfigError(f"{out}: exists and is a file, expected an output directory")
    if config.overwrite or not any(out.iterdir()):
        return "new"
    run_file = out / RUN_FILE
    if not run_file.exists():
        raise ConfigError(f"{out}: exists and holds something other than {run_name}; "
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
