"""Training checkpoints under RUN_DIR/checkpoints/step-NNNNNNN/, written atomically.

Each holds what exact resume needs: the trainable parameters (all of them, or only the
adapter), optimizer and scheduler state, the loop's counters (the step fixes the data
position, because the shuffle order is a pure function of seed and epoch) and every RNG
state, one file per rank. A checkpoint appears only once complete (temp dir + rename), so a
run killed at any instant resumes from the last whole one. The last ``keep_last`` are kept,
plus the best by validation loss, which ``best.json`` names.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from workbench.training.distributed import Dist, barrier, broadcast_object

PREFIX = "step-"
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
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def save_checkpoint(checkpoints_dir: Path, model, optimizer, scheduler, state: LoopState,
                    config: dict, keep_last: int, ctx: Dist) -> Path:
    """Write step-N atomically (every rank adds its RNG state), then prune old ones."""
    final = checkpoints_dir / f"{PREFIX}{state.step:07d}"
    tmp = checkpoints_dir / f".{final.name}.tmp"
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(ctx)
    torch.save(capture_rng(), tmp / f"rng-rank{ctx.rank}.pt")
    barrier(ctx)
    if ctx.is_main:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                   tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(
            {"loop": asdict(state), "world_size": ctx.world_size, "config": config}, indent=2))
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        if state.best_step == state.step:
            mark_best(checkpoints_dir, state)
        _prune(checkpoints_dir, keep_last)
    barrier(ctx)
    return final


def mark_best(checkpoints_dir: Path, state: LoopState) -> None:
    (checkpoints_dir / BEST_FILE).write_text(json.dumps(
        {"checkpoint": f"{PREFIX}{state.best_step:07d}", "step": state.best_step,
         "valid_loss": state.best_valid_loss}) + "\n")


def load_checkpoint(path: Path, model, optimizer, scheduler, ctx: Dist) -> LoopState:
    """Restore parameters, optimizer, scheduler and this rank's RNG from step-N."""
    record = json.loads((path / "state.json").read_text())
    if record["world_size"] != ctx.world_size:
        from workbench.errors import ConfigError

        raise ConfigError(f"{path}: was written by {record['world_size']} processes; resume with the "
                          f"same number (got {ctx.world_size}) so the data order stays the same")
    saved = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)
    both = torch.load(path / "optimizer.pt", weights_only=True, map_location=ctx.device)
    optimizer.load_state_dict(both["optimizer"])
    scheduler.load_state_dict(both["scheduler"])
    restore_rng(torch.load(path / f"rng-rank{ctx.rank}.pt", weights_only=True))
    return LoopState(**record["loop"])


def latest_checkpoint(checkpoints_dir: Path, ctx: Dist) -> Path | None:
    found = list_checkpoints(checkpoints_dir) if ctx.is_main else []
    return broadcast_object(found[-1] if found else None, ctx)


def _prune(checkpoints_dir: Path, keep_last: int) -> None:
    best = None
    if (checkpoints_dir / BEST_FILE).exists():
        best = json.loads((checkpoints_dir / BEST_FILE).read_text())["checkpoint"]
    for old in list_checkpoints(checkpoints_dir)[:-keep_last]:
        if old.name != best:
            shutil.rmtree(old)


def _fsync_tree(path: Path) -> None:
    for child in path.iterdir():
        with open(child, "rb") as f:
            os.fsync(f.fileno())
