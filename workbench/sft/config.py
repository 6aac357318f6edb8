"""SFT settings: the training loop's hyperparameters plus model, data, output and LoRA."""

from __future__ import annotations

from dataclasses import dataclass

from workbench.errors import ConfigError
from workbench.training.config import TrainingConfig

TRUNCATION_MODES = ("truncate", "drop")
# A LoRA run's peft adapter, beside the merged weights in OUT (recipes name it as STEP after '+').
ADAPTER_DIR = "adapter"


@dataclass
class SFTConfig(TrainingConfig):
    model: str = ""
    data: str = ""
    out: str = ""
    val_data: str | None = None
    val_split: float = 0.1
    truncation: str = "truncate"
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: str = "all-linear"
    lora_dropout: float = 0.0

    def validate(self) -> None:
        for key in ("model", "data", "out"):
            if not getattr(self, key):
                raise ConfigError(f"{key} is required")
        super().validate()
        if not 0 <= self.val_split < 1:
            raise ConfigError(f"val_split must be in [0, 1), got {self.val_split!r}")
        if self.truncation not in TRUNCATION_MODES:
            raise ConfigError(f"truncation must be one of {', '.join(TRUNCATION_MODES)}, got {self.truncation!r}")
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
        fields = self.training_fields()
        for volatile in ("resume", "overwrite", "progress", "out"):
            fields.pop(volatile)
        if not fields["fsdp"]:
            fields.pop("fsdp")  # runs from before --fsdp existed keep their identity
        return fields
