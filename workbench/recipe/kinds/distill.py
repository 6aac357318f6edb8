"""`distill`: train a student on a teacher's distribution (online, or from a teacher cache
made by `workbench distill cache-teacher`, fingerprinted by its manifest)."""

from __future__ import annotations

from pathlib import Path

from workbench.recipe.kinds.base import StepCall, StepKind, build_config, dataclass_parameters, validate_config
from workbench.recipe.kinds.torchrun import TorchrunLaunch

CACHE_KEY = "teacher_cache"


class Distill(TorchrunLaunch, StepKind):
    name = command = "distill"
    checkpoint_keys = ("teacher", "student")
    required = ("student", "data")
    trains = True

    def parameters(self) -> dict[str, object]:
        from workbench.distill import DistillConfig

        return dataclass_parameters(DistillConfig)

    def resolve(self, step, inputs, problems) -> None:
        super().resolve(step, inputs, problems)
        from workbench.distill import TEACHER_CACHE_MANIFEST

        value = step.params.get(CACHE_KEY)
        if value is None:
            return
        step.params[CACHE_KEY] = candidate = inputs.path(value)
        if not (candidate / TEACHER_CACHE_MANIFEST).is_file():
            problems.add(f"teacher cache '{value}' does not exist (no {TEACHER_CACHE_MANIFEST} in {candidate}; "
                         "make one with `workbench distill cache-teacher`)", step.id, CACHE_KEY)

    def validate(self, step, stand_in: str) -> None:
        from workbench.distill import DistillConfig

        validate_config(DistillConfig, step, stand_in)

    def fingerprint_part(self, key: str, value, canonical, hashes):
        """A teacher cache by its manifest, which holds the fingerprints of what it was made from."""
        if key == CACHE_KEY and isinstance(value, Path):
            from workbench.distill import TEACHER_CACHE_MANIFEST

            return {"teacher cache": hashes.of(value / TEACHER_CACHE_MANIFEST)}
        return canonical(value)

    def run(self, call: StepCall) -> Path:
        from workbench import distill

        config = build_config(distill.DistillConfig, self.engine_values(call))
        return distill.run(config).path
