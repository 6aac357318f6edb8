"""The run directory OUT of a training engine (sft, distill): its identity, and the final
checkpoint written into it.

OUT holds the run itself (run.json: the settings and input fingerprints that define it;
events.jsonl, loss.png, checkpoints/) and, once training is done, the resulting model as a
checkpoint (config.json, weights, tokenizer, workbench.json). Re-running the same command
resumes an interrupted run or returns the finished one; a directory holding anything else
is refused unless the user says --resume (continue that run with new settings) or --overwrite.
"""

from __future__ import annotations

import json
from pathlib import Path

from workbench import atomic
from workbench.checkpoint import CONFIG_FILE, Checkpoint, parse_dtype, save_model, unique_state_dict
from workbench.errors import ConfigError
from workbench.training.distributed import Dist, barrier

RUN_FILE = "run.json"


def check_run_dir(out: Path, identity: dict, *, resume: bool, overwrite: bool) -> str:
    """'new', 'continue' (resume from OUT/checkpoints) or 'done' (OUT holds this finished run).
    Nothing is written before every input has been checked, except that what a killed run's
    writes left beside OUT is first finished or removed (``atomic.recover``)."""
    atomic.recover(out)
    if not out.exists():
        return "new"
    if not out.is_dir():
        raise ConfigError(f"{out}: exists and is a file, expected an output directory")
    if not any(out.iterdir()):
        return "new"
    foreign = not any((out / marker).is_file() for marker in atomic.OUTPUT_MARKERS)
    if foreign:
        raise ConfigError(f"{out}: exists and holds something other than a training run or a checkpoint "
                          "this tool wrote; choose another output directory (--overwrite replaces only those)")
    if overwrite:
        return "new"
    run_file = out / RUN_FILE
    if not run_file.exists():
        raise ConfigError(f"{out}: exists and holds something other than a training run; "
                          "pass --overwrite to replace it")
    recorded = json.loads(run_file.read_text())
    if recorded != identity and not resume:
        changed = sorted(k for k in recorded.keys() | identity.keys() if recorded.get(k) != identity.get(k))
        raise ConfigError(f"{out}: holds a different run (differs in {', '.join(changed)}); pass --resume "
                          "to continue it with these settings or --overwrite to start over")
    if recorded == identity and (out / CONFIG_FILE).exists():
        return "done"
    return "continue"


def begin_run(out: Path, identity: dict, status: str, ctx: Dist, *, fsdp: bool, overwrite: bool) -> None:
    """Called on every rank once its inputs are checked: a run to continue must be resumable
    by this launch; only when every rank got this far does rank 0 (re)create OUT, while the
    others wait for it."""
    if status == "continue":
        check_resume_from(out, ctx, fsdp)
    barrier(ctx)  # every rank has checked its inputs; only now is anything written
    if ctx.is_main:
        start_run_dir(out, identity, status, overwrite)
    barrier(ctx)


def check_resume_from(out: Path, ctx: Dist, fsdp: bool) -> None:
    """A run to continue must resume from a checkpoint this launch can load (same number of
    processes, same sharding): checked before OUT is touched."""
    from workbench.training.loop import CHECKPOINTS_DIR
    from workbench.training.state import check_resumable, list_checkpoints

    found = list_checkpoints(out / CHECKPOINTS_DIR)
    if found:
        check_resumable(found[-1], ctx, fsdp)


def start_run_dir(out: Path, identity: dict, status: str, overwrite: bool) -> None:
    """Create (or, with --overwrite, empty and recreate) OUT and record the run's identity."""
    if status == "new" and overwrite and out.exists():
        atomic.check_replaceable(out)
        atomic.remove_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).unlink(missing_ok=True)  # OUT is a checkpoint again only once training is done
    atomic.write_json(out / RUN_FILE, identity)


def write_final_model(model, out: Path, base: Checkpoint, lineage: dict, ctx: Dist | None = None) -> None:
    """Make OUT a checkpoint: the model's weights in the base model's dtype, the base's tokenizer,
    chat template and generation config, lineage. Written in a staging directory beside OUT and
    moved in with config.json last, so OUT never looks like a partial checkpoint; a kill
    mid-way leaves OUT a run without config.json (the next run writes the model again) and a
    staging leftover that the next run's ``check_run_dir`` removes.

    Called on every rank. A model sharded with FSDP is gathered one tensor at a time (each rank
    joins every gather; rank 0 writes the tensor from the CPU and drops it), so memory stays
    bounded by the writer's largest tensor, never the whole model; other models rank 0 writes."""
    from workbench.training.fsdp import full_tensor, is_sharded

    ctx = ctx or Dist()
    sharded = is_sharded(model)
    if not ctx.is_main:
        if sharded:
            for tensor in unique_state_dict(model).values():
                full_tensor(tensor)
        return
    staging = atomic.hidden_sibling(out, atomic.STAGING)
    dtype = parse_dtype(base.config.get("dtype") or base.config.get("torch_dtype") or "float32")
    save_model(model, staging, lineage=lineage, support_from=base.path, dtype=dtype,
               materialize=(lambda tensor: full_tensor(tensor).cpu()) if sharded else None)
    atomic.move_files_into(staging, out, last=CONFIG_FILE)
