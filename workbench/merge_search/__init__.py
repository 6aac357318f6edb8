"""Merge search: tune a merge's parameters (weights, densities, SLERP's t, lambda, as scalars or
layer gradients) against validation data, on a laptop.

merge_search composes two engines through their public functions and adds only the search:
each trial is a merge by the merge engine (``workbench.merge.tensors``, in memory) measured by
the evaluate engine's functions (loss, exact match, KL to a reference); optuna proposes the
trials; finished trials are cached by fingerprint; the best trial is written by
``workbench.merge.run`` as a normal checkpoint, with trials.csv, objective.png and search.md.

    from workbench import merge_search
    merge_search.run("search.yml", "out/best", trials=20)

SEARCH.yml is a mergekit config plus a ``search:`` block (``workbench.merge_search.space``).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from workbench.checkpoint import Checkpoint
from workbench.errors import CheckpointError, ConfigError
from workbench.merge_search.space import SearchSpec, parse_search

__all__ = ["run", "load_search", "SearchResult", "trials_dir_for", "CSV_FILE", "PLOT_FILE", "REPORT_FILE"]

CSV_FILE, PLOT_FILE, REPORT_FILE = "trials.csv", "objective.png", "search.md"


@dataclass
class SearchResult:
    checkpoint: Checkpoint  # the best trial's merge
    best: object  # its TrialRecord
    records: list  # every trial's TrialRecord
    seconds: float


def load_search(search: dict | str | os.PathLike, source: str | None = None,
                trials: int | None = None) -> SearchSpec:
    """A validated SearchSpec from a SEARCH.yml path or its parsed contents; ``trials``
    replaces ``search.trials``."""
    from workbench.yaml_io import read_yaml

    if isinstance(search, dict):
        return parse_search(search, source or "search", trials)
    path = Path(search)
    if not path.exists():
        raise ConfigError(f"{path}: search file does not exist")
    if not path.is_file():
        raise ConfigError(f"{path}: is a directory, expected a SEARCH.yml file")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with merge_method, models and search at the top")
    return parse_search(raw, str(path), trials)


def trials_dir_for(out_dir: str | os.PathLike) -> Path:
    """Where finished trials are cached by default: OUT_DIR.trials beside OUT_DIR (not inside
    it: OUT_DIR appears only when the search is done, whole)."""
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}.trials"


def run(search: dict | str | os.PathLike, out_dir: str | os.PathLike, *, trials: int | None = None,
        trials_dir: str | os.PathLike | None = None, overwrite: bool = False, progress: bool = False,
        log=None) -> SearchResult:
    """Search the merge parameters SEARCH names; write the best merge to ``out_dir``.

    ``trials`` overrides ``search.trials``. Every input problem is reported before anything is
    read beyond headers and data files, and nothing is written then. ``out_dir`` may replace an
    earlier search's output; anything else there needs ``overwrite``."""
    from workbench.merge import Attachments, tensors
    from workbench.merge import run as merge_run
    from workbench.merge_search import report
    from workbench.merge_search.cache import TrialCache
    from workbench.merge_search.model import MergedModel
    from workbench.merge_search.objective import Objective
    from workbench.merge_search.study import run_study

    started = time.perf_counter()
    log = log or _default_log
    spec = load_search(search, trials=trials)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    lows = {label: dim.low for dim in spec.dimensions for label in dim.labels()}
    tensors(spec.trial_config(lows)).close()  # header checks of every input, nothing read yet
    merged = MergedModel(spec.merge)
    objective = Objective(spec, merged.tokenizer)
    objective.prepare_references()
    inputs = {str(entry.ref): Checkpoint(entry.ref.path).fingerprint() for entry in spec.merge.inputs()}
    cache = TrialCache(trials_dir or trials_dir_for(out_dir))
    result = run_study(spec, merged, objective, cache, inputs, log=log, progress=progress)
    best = result.best
    seconds = time.perf_counter() - started
    attachments = Attachments(
        parameters={"search": {
            "source": spec.source, "search": spec.raw, "trial": best.number, "parameters": best.values,
            "terms": best.terms, "objective": best.objective, "trials": len(result.records),
            "sampler": spec.sampler, "seed": spec.seed}},
        inputs=_objective_inputs(spec),
        files={CSV_FILE: report.trials_csv(result),
               PLOT_FILE: report.objective_plot(result, f"merge search: {Path(spec.source).name}"),
               REPORT_FILE: report.report_markdown(result, source=spec.source, sampler=spec.sampler,
                                                          seed=spec.seed, seconds=seconds)},
    )
    checkpoint = merge_run(spec.trial_config(best.values), out_dir, backend="native", overwrite=True,
                           attachments=attachments)
    return SearchResult(checkpoint, best, result.records, time.perf_counter() - started)


def _objective_inputs(spec: SearchSpec) -> dict:
    """The objective's data files (and KL references) as lineage inputs."""
    inputs = {}
    for i, term in enumerate(spec.objective):
        inputs[f"objective[{i}].data"] = term.data
        if term.reference is not None:
            inputs[f"objective[{i}].reference"] = Checkpoint(term.reference)
    return inputs


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """An existing OUT_DIR is replaced only when it is an earlier search's best merge, or
    with ``overwrite`` a directory the workbench wrote (never a user's folder); checked before
    the search, not after it."""
    from workbench import atomic

    if not out_dir.exists():
        return
    if overwrite:
        atomic.check_replaceable(out_dir)
        return
    try:
        lineage = Checkpoint(out_dir).lineage or {}
    except CheckpointError:
        lineage = {}
    if "search" not in lineage.get("parameters", {}):
        raise CheckpointError(f"{out_dir}: already exists and is not a merge search's output "
                              "(pass --overwrite to replace it)")


def _default_log(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)
