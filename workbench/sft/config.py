"""SFT settings: the model, its data and output, LoRA, and the training loop's hyperparameters.

The data and training options are the parts every training engine shares
(``workbench.training.config``); options are seen flat (``--lr``, ``lr:``), see
``workbench.training.fields``.
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.errors import ConfigError
from workbench.training.config import DataConfig, TrainingConfig, run_identity
from workbench.training.fields import option, part

# A LoRA run's peft adapter, beside the merged weights in OUT (recipes name it as STEP after '+').
ADAPTER_DIR = "adapter"
VOLATILE = ("resume", "overwrite", "progress", "out")  # settings that do not change what a run computes


@dataclass(slots=True)
class SFTConfig:
    model: str = option("", "Base checkpoint directory.")
    dataset: DataConfig = part(DataConfig)
    out: str = option("", "Output directory: the fine-tuned checkpoint plus events, loss.png, checkpoints/.")
    lora_rank: int = option(0, "LoRA rank (0: full fine-tuning).")
    lora_alpha: float = option(16.0, "LoRA alpha (scale = alpha / rank).")
    lora_targets: str = option("all-linear", "Comma-separated module names, or all-linear.")
    lora_dropout: float = option(0.0, "Dropout on the LoRA input.")
    train: TrainingConfig = part(TrainingConfig)

    def validate(self) -> None:
        for key, value in (("model", self.model), ("data", self.dataset.data), ("out", self.out)):
            if not value:
                raise ConfigError(f"{key} is required")
        self.train.validate()
        self.dataset.validate()
        if not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise ConfigError(f"lora_rank must be an integer >= 0 (0 = full fine-tuning), got {self.lora_rank!r}")
        if not self.lora_alpha > 0:
            raise ConfigError(f"lora_alpha must be > 0, got {self.lora_alpha!r}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")

    @property
    def target_modules(self) -> list[str] | str:
        """'all-linear' (peft's every linear layer but the output head) or module names."""
        if self.lora_targets.strip() == "all-linear":
            return "all-linear"
        return [name.strip() for name in self.lora_targets.split(",") if name.strip()]

    def run_identity(self) -> dict:
        """The settings that define a run: a directory holding another identity is another run."""
        return run_identity(self, VOLATILE)
