"""Training checkpoints under RUN_DIR/checkpoints/step-NNNNNNN/, written atomically.

Each holds what exact resume needs: the trainable parameters (all of them, or only the
adapter) and optimizer state (under --fsdp: every rank's shards of both, through DCP in
``sharded/``, see ``workbench.training.dcp``), scheduler state, the loop's counters (the step fixes the data
position, because the shuffle order is a pure function of seed and epoch) and every RNG
state, one file per rank. Every write goes through ``workbench.atomic``: a checkpoint appears
only once complete and disappears by a rename, so a run killed at any instant resumes from the
last whole one. The last ``keep_last`` are kept, plus the best by validation loss, which
``best.json`` names, plus the newest one known good (see ``_prune``). A checkpoint whose
weights gave a NaN/inf loss or gradient is moved to diverged-step-N (``set_aside_diverged``).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from workbench import atomic
from workbench.errors import ConfigError
from workbench.training.dcp import SHARDED_DIR, load_sharded, save_sharded
from workbench.training.distributed import Dist, barrier, broadcast_object
from workbench.training.fsdp import is_sharded

PREFIX = "step-"
DIVERGED_PREFIX = "diverged-"
BEST_FILE = "best.json"


@dataclass
class LoopState:
    """The loop's counters, saved in every checkpoint."""

    step: int = 0
    elapsed: float = 0.0
    best_valid_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def capture_rng() -> dict:
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(saved: dict) -> None:
    version, internal, gauss = saved["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, *rest = saved["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def list_checkpoints(checkpoints_dir: Path) -> list[Path]:
    if not checkpoints_dir.is_dir():
        return []
    found = [p for p in checkpoints_dir.glob(f"{PREFIX}*") if p.is_dir() and (p / "state.json").exists()]
    return sorted(found, key=_step_of)


def save_checkpoint(checkpoints_dir: Path, model, optimizer, scheduler, state: LoopState,
                    config: dict, keep_last: int, ctx: Dist) -> Path:
    """Write step-N atomically (every rank adds its RNG state), then prune old ones."""
    final = checkpoints_dir / f"{PREFIX}{state.step:07d}"
    staging = atomic.new_staging_dir(final) if ctx.is_main else None
    staging = broadcast_object(staging, ctx)
    torch.save(capture_rng(), staging / f"rng-rank{ctx.rank}.pt")
    sharded = is_sharded(model)
    if sharded:  # collective: every rank writes its shards
        save_sharded(staging, model, optimizer)
    barrier(ctx)
    if ctx.is_main:
        if sharded:
            torch.save({"scheduler": scheduler.state_dict()}, staging / "optimizer.pt")
        else:
            save_file(trainable_state(model), str(staging / "trainable.safetensors"))
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                       staging / "optimizer.pt")
        (staging / "state.json").write_text(json.dumps(
            {"loop": asdict(state), "world_size": ctx.world_size, "config": config}, indent=2))
        atomic.commit_dir(staging, final)
        if state.best_step is not None:
            write_best(checkpoints_dir, state)
        _prune(checkpoints_dir, keep_last, state)
    barrier(ctx)
    return final


def write_best(checkpoints_dir: Path, state: LoopState) -> None:
    """best.json, rewritten whole from the loop state at every save (so one a kill or a full
    disk left empty is repaired by the next save; nothing reads it back)."""
    atomic.write_json(checkpoints_dir / BEST_FILE, {
        "checkpoint": f"{PREFIX}{state.best_step:07d}", "step": state.best_step,
        "valid_loss": state.best_valid_loss}, indent=None)


def load_checkpoint(path: Path, model, optimizer, scheduler, ctx: Dist) -> LoopState:
    """Restore parameters, optimizer, scheduler and this rank's RNG from step-N."""
    record = check_resumable(path, ctx, is_sharded(model))
    both = torch.load(path / "optimizer.pt", weights_only=True, map_location=ctx.device)
    if is_sharded(model):
        load_sharded(path, model, optimizer)
    else:
        saved = load_file(str(path / "trainable.safetensors"))
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)
        optimizer.load_state_dict(both["optimizer"])
    scheduler.load_state_dict(both["scheduler"])
    restore_rng(torch.load(path / f"rng-rank{ctx.rank}.pt", weights_only=True))
    return LoopState(**record["loop"])


def check_resumable(path: Path, ctx: Dist, fsdp: bool) -> dict:
    """Refuse a checkpoint written by another number of processes (the data order and, under
    FSDP, the shards depend on it) or with the other sharding; its state.json otherwise."""
    record = json.loads((path / "state.json").read_text())
    if record["world_size"] != ctx.world_size:
        raise ConfigError(f"{path}: was written by {record['world_size']} processes and this run has "
                          f"{ctx.world_size}; resume with {record['world_size']} so the data order "
                          "(and the shards) stay the same")
    written_sharded = (path / SHARDED_DIR).is_dir()
    if written_sharded != fsdp:
        raise ConfigError(f"{path}: was written {'with' if written_sharded else 'without'} --fsdp; "
                          f"resume it {'with' if written_sharded else 'without'} --fsdp")
    return record


def latest_checkpoint(checkpoints_dir: Path, ctx: Dist) -> Path | None:
    """The checkpoint to resume from, once what killed writes left there is cleaned or restored."""
    if ctx.is_main:
        atomic.recover(parent=checkpoints_dir)
    found = list_checkpoints(checkpoints_dir) if ctx.is_main else []
    return broadcast_object(found[-1] if found else None, ctx)


def set_aside_diverged(checkpoints_dir: Path, bad_step: int) -> Path | None:
    """After the weights of ``bad_step`` proved non-finite or gave a non-finite loss or gradient:
    move their checkpoint (if one was saved) to diverged-step-N, out of resume's way but kept to
    inspect, and return the newest checkpoint before it. Every one of those is good: its weights
    are finite (checked before saving) and the step taken from them had a finite loss and
    gradient. best.json is rewritten from that checkpoint's state."""
    bad = checkpoints_dir / f"{PREFIX}{bad_step:07d}"
    if bad.exists():
        aside = checkpoints_dir / f"{DIVERGED_PREFIX}{bad.name}"
        atomic.remove_dir(aside)
        os.rename(bad, aside)
        atomic.fsync_dir(checkpoints_dir)
    good = [p for p in list_checkpoints(checkpoints_dir) if _step_of(p) < bad_step]
    if good:
        kept_state = LoopState(**json.loads((good[-1] / "state.json").read_text())["loop"])
        if kept_state.best_step is not None:
            write_best(checkpoints_dir, kept_state)
            return good[-1]
    (checkpoints_dir / BEST_FILE).unlink(missing_ok=True)
    return good[-1] if good else None


def _prune(checkpoints_dir: Path, keep_last: int, state: LoopState) -> None:
    """Keep the newest ``keep_last``, the best, and the newest one before this step's: this
    step's weights are not yet known to give a finite loss, so that one is the last known good."""
    found = list_checkpoints(checkpoints_dir)
    keep = set(found[-keep_last:])
    earlier = [p for p in found if _step_of(p) < state.step]
    if earlier:
        keep.add(earlier[-1])
    if state.best_step is not None:
        keep.add(checkpoints_dir / f"{PREFIX}{state.best_step:07d}")
    for old in found:
        if old not in keep:
            atomic.remove_dir(old)


def _step_of(path: Path) -> int:
    return int(path.name[len(PREFIX):])
