"""`import`: bring a model into the recipe from a checkpoint directory (used in place), a
GGUF file (dequantized to safetensors) or `tiny` options (a random model for tests and demos)."""

from __future__ import annotations

import typing
from pathlib import Path

from workbench.recipe.kinds.base import StepCall, StepKind

SOURCES = ("path", "gguf", "tiny")


class Import(StepKind):
    name = "import"
    checkpoint_keys = ("path",)
    brings_model = True

    def parameters(self) -> dict[str, object]:
        return {"path": str, "gguf": str, "tiny": dict, "dtype": typing.Optional[str]}

    def data_keys(self) -> tuple[str, ...]:
        return ("gguf",)  # hashed by content like a data file

    def check(self, step, problems) -> None:
        if len([k for k in SOURCES if step.params.get(k) is not None]) != 1:
            problems.add("import needs exactly one source: path (a checkpoint), gguf (a file) or tiny "
                         "(a random model)", step.group)

    def validate(self, step, stand_in: str) -> None:
        """The tiny model's options and the dtype a GGUF file is dequantized to."""
        if step.params.get("tiny") is not None:
            from workbench.model_import import check_tiny_options

            check_tiny_options(step.params["tiny"])
        if step.params.get("dtype") is not None:
            from workbench.checkpoint import parse_dtype

            parse_dtype(step.params["dtype"])

    def run(self, call: StepCall) -> Path:
        params = call.params
        if params.get("path") is not None:
            from workbench.checkpoint import Checkpoint

            return Checkpoint(params["path"]).path
        if params.get("gguf") is not None:
            from workbench.checkpoint import parse_dtype
            from workbench.model_import import import_gguf

            return import_gguf(params["gguf"], call.out, dtype=parse_dtype(params.get("dtype")), overwrite=True).path
        from workbench.model_import import build_tiny

        return build_tiny(call.out, params["tiny"], overwrite=True).path
