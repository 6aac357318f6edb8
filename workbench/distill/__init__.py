"""Distillation: chunked KD losses, students cut from a teacher, offline teacher cache, engine.

``run``, ``init_student`` and ``TEACHER_CACHE_MANIFEST`` are imported lazily so that reading
``DistillConfig`` (e.g. for `--help`) does not load torch.
"""

from workbench.distill.config import DistillConfig

__all__ = ["DistillConfig", "TEACHER_CACHE_MANIFEST", "init_student", "run"]


def __getattr__(name: str):
    if name == "run":
        from workbench.distill.engine import run

        return run
    if name == "init_student":
        from workbench.distill.student import init_student

        return init_student
    if name == "TEACHER_CACHE_MANIFEST":  # the file that identifies a teacher cache directory
        from workbench.distill.cache import MANIFEST

        return MANIFEST
    raise AttributeError(f"module 'workbench.distill' has no attribute '{name}'")
