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
    chunk_size: int = 0
    teacher_top_k: int = 0
    teacher_dtype: str | None = None
    teacher_device: str | None = None
    teacher_cache: str | None = None
    on_policy: float = 0.0
    sample_temperature: float = 1.0
    max_new_tokens: int = 128
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
        self.validate_on_policy()
        if self.teacher_top_k and self.teacher_cache:
            raise ConfigError("teacher_top_k applies to the online teacher; a teacher cache already holds "
                              "its own top-k (drop one of them)")
        if self.fsdp and self.teacher_device:
            raise ConfigError("fsdp shards the teacher over the same devices as the student; drop teacher_device")
        if self.fsdp and self.on_policy:
            raise ConfigError("on_policy sampling is not supported with fsdp (generation from a sharded "
                              "student); use data parallelism (torchrun without --fsdp) or on_policy 0")
        if self.teacher_dtype is not None and self.teacher_dtype not in TEACHER_DTYPES:
            raise ConfigError(f"teacher_dtype must be one of {', '.join(TEACHER_DTYPES)}, got {self.teacher_dtype!r}")

    def validate_on_policy(self) -> None:
        if not 0 <= self.on_policy <= 1:
            raise ConfigError(f"on_policy must be in [0, 1] (the share of batches on the student's own "
                              f"answers), got {self.on_policy!r}")
        if self.sample_temperature < 0:
            raise ConfigError(f"sample_temperature must be >= 0 (0: greedy), got {self.sample_temperature!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if self.on_policy and self.teacher_cache:
            raise ConfigError("on_policy needs the teacher online to score the student's answers; "
                              "drop teacher_cache (or set on_policy 0)")
        if self.on_policy and self.alpha != 1:
            raise ConfigError("on_policy batches hold the student's own answers, which have no label for "
                              "cross-entropy: use alpha 1 with on_policy")
        if self.on_policy and self.packing:
            raise ConfigError("on_policy samples one answer per row; it needs packing off")

    @property
    def loss_spec(self):
        """The loss settings as a ``workbench.distill.losses.LossSpec`` (imported here: it needs torch)."""
        from workbench.distill.losses import LossSpec

        return LossSpec(self.loss, self.beta, self.temperature, self.alpha, self.chunk_size, self.teacher_top_k)

    def run_identity(self) -> dict:
        """The settings that define a run: a directory holding another identity is another run."""
        fields = self.training_fields()
        for volatile in ("resume", "overwrite", "progress", "out", "teacher_device", "chunk_size"):
            fields.pop(volatile)
        if not fields["fsdp"]:
            fields.pop("fsdp")  # runs from before --fsdp existed keep their identity
        return fields
