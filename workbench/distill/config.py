"""Distillation settings: teacher, student, loss, on-policy sampling, plus the data and
training-loop parts every training engine shares (``workbench.training.config``); options are
seen flat (``--lr``, ``lr:``), see ``workbench.training.fields``."""

from __future__ import annotations

from dataclasses import dataclass

from workbench.errors import ConfigError
from workbench.training.config import DataConfig, TrainingConfig, run_identity
from workbench.training.fields import option, part

TEACHER_DTYPES = ("float32", "bfloat16", "float16")
CROSS_TOKENIZER_MODES = ("uld", "align")
# settings that do not change what a run computes
VOLATILE = ("resume", "overwrite", "progress", "out", "teacher_device", "chunk_size")


@dataclass(slots=True)
class DistillConfig:
    teacher: str = option("", "Teacher checkpoint (not needed with --teacher-cache).")
    student: str = option("", "Student checkpoint with the teacher's tokenizer (see `workbench student init`).")
    dataset: DataConfig = part(DataConfig)
    out: str = option("", "Output directory: the distilled student plus events, loss.png, checkpoints/.")
    loss: str = option("reverse_kl", "reverse_kl (KL(student||teacher)) | forward_kl (KL(teacher||student)) | jsd.")
    beta: float = option(0.5, "jsd mixture weight of the teacher: 0 is forward_kl, 1 is reverse_kl.")
    temperature: float = option(1.0, "Softmax temperature of both models in the KD term (loss scaled by T^2).")
    alpha: float = option(1.0, "Weight of the KD loss; 1 - alpha goes to cross-entropy on the labels.")
    chunk_size: int = option(0, "Tokens per chunk of the loss; memory ~ chunk x vocab (0: auto, 512 at vocab "
                                "49152).")
    teacher_top_k: int = option(0, "Compare with the online teacher over its top-k ids plus one bucket for the "
                                   "rest, as a cache does (0: whole vocab).")
    teacher_dtype: str | None = option(None, "Teacher weights dtype: float32 | bfloat16 | float16 (default: its "
                                             "own).")
    teacher_device: str | None = option(None, "Teacher device, e.g. cpu or cuda:1 (default: the student's).")
    teacher_cache: str | None = option(None, "Use a cache from `workbench distill cache-teacher` instead of "
                                             "running the teacher.")
    on_policy: float = option(0.0, "Share of batches whose answers the student samples itself, scored by the "
                                   "teacher (GKD; TRL's lmbda): 0 off, 1 always.")
    sample_temperature: float = option(1.0, "Temperature of the student's on-policy samples (0: greedy).")
    max_new_tokens: int = option(128, "Longest on-policy answer the student samples, in tokens.")
    cross_tokenizer: str | None = option(None, "Teacher with another tokenizer: uld (sorted-probability distance on "
                                               "targets that continue the same text, plus the student's "
                                               "cross-entropy) | align (--loss over the tokens both vocabularies "
                                               "spell the same, ULD for the rest).")
    uld_weight: float = option(1.5, "Weight of the ULD term with --cross-tokenizer (uld: against the student's "
                                    "cross-entropy, paper 1.5; align: of the unmapped tokens).")
    train: TrainingConfig = part(TrainingConfig, lr=1e-4)

    def validate(self) -> None:
        for key, value in (("student", self.student), ("data", self.dataset.data), ("out", self.out)):
            if not value:
                raise ConfigError(f"{key} is required")
        if not self.teacher and not self.teacher_cache:
            raise ConfigError("teacher is required (or teacher_cache, made by `workbench distill cache-teacher`)")
        self.train.validate()
        self.loss_spec.validate()
        self.dataset.validate()
        self.validate_on_policy()
        self.validate_cross_tokenizer()
        if self.teacher_top_k and self.teacher_cache:
            raise ConfigError("teacher_top_k applies to the online teacher; a teacher cache already holds "
                              "its own top-k (drop one of them)")
        if self.train.fsdp and self.teacher_device:
            raise ConfigError("fsdp shards the teacher over the same devices as the student; drop teacher_device")
        if self.train.fsdp and self.on_policy:
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
        if self.on_policy and self.train.packing:
            raise ConfigError("on_policy samples one answer per row; it needs packing off")

    def validate_cross_tokenizer(self) -> None:
        if self.cross_tokenizer is None:
            return
        if self.cross_tokenizer not in CROSS_TOKENIZER_MODES:
            raise ConfigError(f"cross_tokenizer must be one of {', '.join(CROSS_TOKENIZER_MODES)}, "
                              f"got {self.cross_tokenizer!r}")
        if not self.uld_weight >= 0:
            raise ConfigError(f"uld_weight must be >= 0, got {self.uld_weight!r}")
        unsupported = (("on_policy", 0.0), ("teacher_top_k", 0))
        if self.cross_tokenizer == "uld":  # ULD weighs its own terms: CE + uld_weight * ULD
            unsupported += (("alpha", 1.0),)
        for key, off in unsupported:
            if getattr(self, key) != off:
                raise ConfigError(f"{key} is not supported with cross_tokenizer {self.cross_tokenizer}")

    @property
    def loss_spec(self):
        """The loss settings as a ``workbench.distill.losses.LossSpec`` (imported here: it needs torch)."""
        from workbench.distill.losses import LossSpec

        return LossSpec(self.loss, self.beta, self.temperature, self.alpha, self.chunk_size, self.teacher_top_k)

    def run_identity(self) -> dict:
        """The settings that define a run: a directory holding another identity is another run.
        The cross-tokenizer settings only when --cross-tokenizer is on, so runs from before it
        existed keep their identity."""
        volatile = VOLATILE if self.cross_tokenizer else (*VOLATILE, "cross_tokenizer", "uld_weight")
        return run_identity(self, volatile)
