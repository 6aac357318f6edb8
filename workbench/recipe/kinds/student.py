"""`student`: a smaller model cut from a teacher (its embeddings, head and chosen layers)."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

from workbench.recipe.kinds.base import RUNNER_OWNED, StepCall, StepKind, as_strings


class Student(StepKind):
    name = "student"
    checkpoint_keys = ("teacher",)
    required = ("teacher",)

    def parameters(self) -> dict[str, object]:
        from workbench.distill import init_student

        hints = typing.get_type_hints(init_student)
        return {name: hints.get(name, typing.Any) for name in inspect.signature(init_student).parameters
                if name not in RUNNER_OWNED}

    def run(self, call: StepCall) -> Path:
        from workbench.distill import init_student

        return init_student(out_dir=call.out, overwrite=True, **as_strings(call.params)).path
