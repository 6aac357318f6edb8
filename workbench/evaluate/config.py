"""What an evaluation is asked to do; the field names are the `workbench eval` options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from workbench.errors import ConfigError

MATCH_MODES = ("exact", "contains", "regex")


@dataclass
class EvalConfig:
    models: list[str]
    data: list[str]
    reference: Optional[str] = None  # greedy answers of every model are compared with this one's
    base: Optional[str] = None  # the baseline; found through the lineage when not given
    match: str = "exact"
    max_new_tokens: int = 64
    max_length: int = 1024
    batch_size: int = 8
    limit: int = 0  # evaluate only the first N examples of each file (0: all)
    side_by_side: int = 3  # prompts shown with every model's answer
    labels: list[str] = field(default_factory=list)  # display names, one per model
    out: Optional[str] = None

    def validate(self) -> None:
        if not self.models:
            raise ConfigError("models: name at least one checkpoint to evaluate")
        if not self.data:
            raise ConfigError("data: name at least one held-out JSONL file (--data FILE)")
        if self.match not in MATCH_MODES:
            raise ConfigError(f"match must be one of {', '.join(MATCH_MODES)}, got {self.match!r}")
        for key in ("max_new_tokens", "max_length", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1, got {getattr(self, key)}")
        for key in ("limit", "side_by_side"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.labels and len(self.labels) != len(self.models):
            raise ConfigError(f"labels: {len(self.labels)} given for {len(self.models)} models")
