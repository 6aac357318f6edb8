"""Run one step of each kind by calling its engine's plain function.

Parameters arrive validated, with inputs resolved to checkpoint paths. Each executor writes
into ``out`` (replacing what a previous, different run left there unless resuming) and
returns the path of what the step produced.
"""

from __future__ import annotations

from pathlib import Path

from workbench.checkpoint import Checkpoint


def plain(value):
    """Paths as strings, recursively: what the engines' configs expect."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def run_import(params: dict, out: Path, resume: bool) -> Path:
    if params.get("path") is not None:
        return Checkpoint(params["path"]).path
    if params.get("gguf") is not None:
        from workbench.checkpoint import parse_dtype
        from workbench.gguf_import import import_gguf

        return import_gguf(params["gguf"], out, dtype=parse_dtype(params.get("dtype")), overwrite=True).path
    from workbench.recipe.tiny_model import build_tiny

    return build_tiny(out, params["tiny"], overwrite=True).path


def run_sft(params: dict, out: Path, resume: bool) -> Path:
    from workbench import sft

    config = sft.SFTConfig(**plain(params), out=str(out), resume=resume, overwrite=not resume)
    return sft.run(config).path


def run_distill(params: dict, out: Path, resume: bool) -> Path:
    from workbench import distill

    config = distill.DistillConfig(**plain(params), out=str(out), resume=resume, overwrite=not resume)
    return distill.run(config).path


def run_student(params: dict, out: Path, resume: bool) -> Path:
    from workbench.distill import init_student

    return init_student(out_dir=out, overwrite=True, **plain(params)).path


def run_merge(params: dict, out: Path, resume: bool) -> Path:
    from workbench import merge

    return merge.run(plain(params), out, overwrite=True, progress=True).path


def run_eval(params: dict, out: Path, resume: bool) -> Path:
    from workbench.evaluate import EvalConfig, run

    run(EvalConfig(**plain(params), out=str(out)))
    return out


EXECUTORS = {
    "import": run_import,
    "sft": run_sft,
    "distill": run_distill,
    "student": run_student,
    "merge": run_merge,
    "eval": run_eval,
}
