"""What the runner remembers about each step: runs/<name>/state/<step-id>.json.

A record is written when a step starts (status "running") and rewritten when it ends
("done" with its output and the output's fingerprint, or "failed" with the error). A record
still "running" when the next run starts means the step was interrupted.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from workbench import atomic


@dataclass
class StepRecord:
    id: str
    kind: str
    fingerprint: str
    parts: dict  # parameter -> hash of its value (inputs by content), to say what changed
    status: str  # running | done | failed
    output: str | None = None
    output_fingerprint: str | None = None
    started: float | None = None
    seconds: float | None = None
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    inputs: dict = field(default_factory=dict)  # parameter -> step id or path, for the lineage


def record_path(run_dir: Path, step_id: str) -> Path:
    return run_dir / "state" / f"{step_id}.json"


def read_record(run_dir: Path, step_id: str) -> StepRecord | None:
    path = record_path(run_dir, step_id)
    if not path.is_file():
        return None
    try:
        return StepRecord(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError):
        return None  # a record we cannot read is a step we run again


def write_record(run_dir: Path, record: StepRecord) -> None:
    atomic.write_json(record_path(run_dir, record.id), asdict(record))
