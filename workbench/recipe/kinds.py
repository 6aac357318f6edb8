"""What each step kind accepts: its parameters (with types), which of them name input
checkpoints, which name data files and which name teacher caches.

The parameters of sft and distill are the fields of the engine's config dataclass (the same
names as its CLI options), so a recipe can never drift from the command line. Engines are
imported lazily: validating a recipe of merges does not import the training stack.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass
from typing import Callable

# Set by the runner, never by the recipe: where the output goes and whether to resume.
RUNNER_OWNED = ("out", "out_dir", "overwrite", "resume", "labels")


@dataclass(frozen=True)
class KindSpec:
    name: str
    parameters: Callable[[], dict[str, object]]  # key -> type annotation (Any when free-form)
    checkpoint_keys: tuple[str, ...]  # values: a step id or a checkpoint directory
    required: tuple[str, ...] = ()
    free_form: bool = False  # merge: the mergekit schema, checked by the merge engine
    cache_keys: tuple[str, ...] = ()  # values: a directory made by `workbench distill cache-teacher`

    def data_keys(self) -> tuple[str, ...]:
        """Parameters naming data files, hashed into the step's fingerprint."""
        return tuple(k for k in self.parameters() if k == "data" or k.endswith("_data") or k == "gguf")


def _dataclass_parameters(cls) -> dict[str, object]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, typing.Any) for f in dataclasses.fields(cls)
            if f.name not in RUNNER_OWNED}


def _required_fields(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls)
                 if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                 and f.name not in RUNNER_OWNED)


def _sft_parameters():
    from workbench.sft import SFTConfig

    return _dataclass_parameters(SFTConfig)


def _distill_parameters():
    from workbench.distill import DistillConfig

    return _dataclass_parameters(DistillConfig)


def _student_parameters():
    from workbench.distill import init_student

    hints = typing.get_type_hints(init_student)
    return {name: hints.get(name, typing.Any) for name in inspect.signature(init_student).parameters
            if name not in RUNNER_OWNED}


def _eval_parameters():
    from workbench.evaluate.config import EvalConfig

    return _dataclass_parameters(EvalConfig)


def _import_parameters():
    return {"path": str, "gguf": str, "tiny": dict, "dtype": typing.Optional[str]}


def _merge_parameters():
    from workbench.merge.config import TOP_LEVEL_KEYS

    return {key: typing.Any for key in TOP_LEVEL_KEYS}


KINDS: dict[str, KindSpec] = {
    "import": KindSpec("import", _import_parameters, checkpoint_keys=("path",)),
    "sft": KindSpec("sft", _sft_parameters, checkpoint_keys=("model",), required=("model", "data")),
    "student": KindSpec("student", _student_parameters, checkpoint_keys=("teacher",),
                        required=("teacher",)),
    "distill": KindSpec("distill", _distill_parameters, checkpoint_keys=("teacher", "student"),
                        required=("student", "data"), cache_keys=("teacher_cache",)),
    "merge": KindSpec("merge", _merge_parameters, checkpoint_keys=(), required=("merge_method",),
                      free_form=True),
    "eval": KindSpec("eval", _eval_parameters, checkpoint_keys=("models", "reference", "base"),
                     required=("models", "data")),
}
TRAINING_KINDS = ("sft", "distill")
