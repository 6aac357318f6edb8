"""Hyperparameters of the training loop, shared by every engine that trains (sft, distill).

Field names are the CLI option names (dashes become underscores). As in transformers and
``workbench data check``, ``batch_size`` is the rows (examples, or packed rows) of one forward
pass on one process: an optimizer step sees batch_size x grad_accum x processes rows, and the
loss is the mean over all their supervised tokens, however they are split.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from workbench.errors import ConfigError

SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TrainingConfig:
    epochs: int = 3
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-5
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 1024
    seed: int = 0
    precision: str = "auto"
    packing: bool = False
    fsdp: bool = False
    eval_every: int = 0
    save_every: int = 0
    keep_last: int = 3
    patience: int = 0
    max_steps: int = 0
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid key."""
        positive = ("epochs", "batch_size", "grad_accum", "max_length", "keep_last")
        for key in positive:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        non_negative = ("warmup_steps", "eval_every", "save_every", "patience", "max_steps", "seed")
        for key in non_negative:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{key} must be an integer >= 0, got {value!r}")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not self.max_grad_norm >= 0:
            raise ConfigError(f"max_grad_norm must be >= 0 (0 disables clipping), got {self.max_grad_norm!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.fsdp and not isinstance(self.fsdp, bool):
            raise ConfigError(f"fsdp must be true or false, got {self.fsdp!r}")
        if self.resume and self.overwrite:
            raise ConfigError("resume and overwrite exclude each other: pick one")

    def training_fields(self) -> dict:
        """The hyperparameters as a plain dict (for lineage and run identity)."""
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


def config_from_dict(cls, values: dict, source: str = "config"):
    """Build a config dataclass from a dict, refusing unknown keys with a suggestion."""
    from workbench.errors import did_you_mean

    names = cls.field_names()
    for key in values:
        if key not in names:
            raise ConfigError(f"{source}: unknown key '{key}'{did_you_mean(key, names)}")
    return cls(**values)
