"""What `workbench serve PATH...` serves: each PATH is a checkpoint or a recipe run directory.

A checkpoint is served under its directory name. A run directory (``runs/NAME/``, the one
holding ``state/``) serves every finished step whose output is a checkpoint, under the
step's id (``expert-dates``, ``ties``, ``student-ce``). Steps that are not served (failed or
unfinished steps, outputs that are not checkpoints such as an evaluation's report) are listed
so that nothing is left out silently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from workbench.checkpoint import CONFIG_FILE, Checkpoint
from workbench.errors import CheckpointError, ConfigError


@dataclass
class Served:
    """Model name -> checkpoint, and a line for each step of a run that is not served."""

    models: dict[str, Checkpoint] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def add(self, name: str, ckpt: Checkpoint, origin: str) -> None:
        if name in self.models:
            raise ConfigError(f"two models named '{name}': {self.models[name].path} and {ckpt.path} "
                              f"(from {origin}); serve them in separate servers or rename one")
        self.models[name] = ckpt


def resolve(paths: list[str | os.PathLike]) -> Served:
    """The models the paths name; a path that is neither a checkpoint nor a run directory,
    a run with nothing to serve, or two models with one name is an error."""
    if not paths:
        raise ConfigError("serve needs at least one checkpoint or recipe run directory")
    served = Served()
    for raw in paths:
        path = Path(raw)
        if (path / CONFIG_FILE).is_file():
            served.add(path.resolve().name, Checkpoint(path), str(path))
        elif (path / "state").is_dir():
            _add_run(served, path)
        elif not path.exists():
            raise ConfigError(f"{path}: does not exist (expected a checkpoint or a recipe run directory)")
        else:
            raise ConfigError(f"{path}: not a checkpoint (no {CONFIG_FILE}) nor a recipe run directory "
                              "(no state/)")
    return served


def _add_run(served: Served, run_dir: Path) -> None:
    from workbench.recipe.state import read_record

    found = 0
    for state_file in sorted((run_dir / "state").glob("*.json")):
        step_id = state_file.stem
        record = read_record(run_dir, step_id)
        if record is None:
            served.skipped.append(f"{run_dir}: step '{step_id}': unreadable state file {state_file}")
        elif record.status != "done" or not record.output:
            served.skipped.append(f"{run_dir}: step '{step_id}': not finished ({record.status})")
        else:
            output = run_dir / record.output  # an absolute output (an imported model) stays itself
            try:
                ckpt = Checkpoint(output)
            except CheckpointError as exc:  # an evaluation's report, or an output since removed
                served.skipped.append(f"{run_dir}: step '{step_id}' ({record.kind}): {exc}")
                continue
            served.add(step_id, ckpt, str(run_dir))
            found += 1
    if not found:
        raise ConfigError(f"{run_dir}: no finished step of this run has a checkpoint to serve")
