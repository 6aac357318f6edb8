"""Distillation: chunked KD losses, students cut from a teacher, offline teacher cache, engine.

``run`` and ``init_student`` are imported lazily so that reading ``DistillConfig`` (e.g. for
`--help`) does not load torch.
"""

from workbench.distill.config import DistillConfig

__all__ = ["DistillConfig", "init_student", "run"]


def __getattr__(name: str):
    if name == "run":
        from workbench.distill.engine import run

        return run
    if name == "init_student":
        from workbench.distill.student import init_student

        return init_student
    raise AttributeError(f"module 'workbench.distill' has no attribute '{name}'")
