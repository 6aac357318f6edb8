"""`sft`: supervised fine-tuning of a model on chat data; with lora_rank > 0 the output also
holds the peft adapter, which a merge can name as STEP after '+'."""

from __future__ import annotations

from pathlib import Path

from workbench.recipe.kinds.base import StepCall, StepKind, build_config, dataclass_parameters, validate_config
from workbench.recipe.kinds.torchrun import TorchrunLaunch


class Sft(TorchrunLaunch, StepKind):
    name = command = "sft"
    checkpoint_keys = ("model",)
    required = ("model", "data")
    trains = True
    publishes = {"adapter": "with lora_rank > 0"}

    def parameters(self) -> dict[str, object]:
        from workbench.sft import SFTConfig

        return dataclass_parameters(SFTConfig)

    def validate(self, step, stand_in: str) -> None:
        from workbench.sft import SFTConfig

        validate_config(SFTConfig, step, stand_in)

    def published(self, params: dict) -> dict[str, str]:
        from workbench.sft import ADAPTER_DIR

        return {"adapter": ADAPTER_DIR} if params.get("lora_rank") else {}

    def run(self, call: StepCall) -> Path:
        from workbench import sft

        config = build_config(sft.SFTConfig, self.engine_values(call))
        return sft.run(config).path
