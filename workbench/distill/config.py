"""Distillation settings: the training loop's hyperparameters plus teacher, student, data, loss."""

from __future__ import annotations

from dataclasses import dataclass

from workbench.errors import ConfigError
from workbench.training.config import TrainingConfig

TRUNCATION_MODES = ("truncate", "drop")
TEACHER_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class DistillConfig(TrainingConfig):
    teacher: str = ""
    student: str = ""
    data: str = ""
    out: str = ""
    val_data: str | None = None
    val_split: float = 0.1
    truncation: str = "truncate"
    loss: str = "reverse_kl"
    beta: float = 0.5
    temperature: float = 1.0
    alpha: float = 1.0
    chunk_size: int = 512
    teacher_dtype: str | None = None
    teacher_device: str | None = None
    teacher_cache: str | None = None
    lr: float = 1e-4

    def validate(self) -> None:
        for key in ("student", "data", "out"):
            if not getattr(self, key):
                raise ConfigError(f"{key} is required")
        if not self.teacher and not self.teacher_cache:
            raise ConfigError("teacher is required (or teacher_cache, made by `workbench distill cache-teacher`)")
        super().validate()
        self.loss_spec.validate()
        if not 0 <= self.val_split < 1:
            raise ConfigError(f"val_split must be in [0, 1), got {self.val_split!r}")
        if self.truncation not in TRUNCATION_MODES:
            raise ConfigError(f"truncation must be one of {', '.join(TRUNCATION_MODES)}, got {self.truncation!r}")
        if self.teacher_dtype is not None and self.teacher_dtype not in TEACHER_DTYPES:
            raise ConfigError(f"teacher_dtype must be one of {', '.join(TEACHER_DTYPES)}, got {self.teacher_dtype!r}")

    @property
    def loss_spec(self):
        """The loss settings as a ``workbench.distill.losses.LossSpec`` (imported here: it needs torch)."""
        from workbench.distill.losses import LossSpec

        return LossSpec(self.loss, self.beta, self.temperature, self.alpha, self.chunk_size)

    def run_identity(self) -> dict:
        """The settings that define a run: a directory holding another identity is another run."""
        fields = self.training_fields()
        for volatile in ("resume", "overwrite", "progress", "out", "teacher_device", "chunk_size"):
            fields.pop(volatile)
        return fields
