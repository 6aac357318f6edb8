"""The search loop: optuna proposes each trial's values, the trial is answered from the cache
or merged in memory and measured, optuna is told the objective. Trial 1 is the config as
written when its values lie in the ranges (``SearchSpec.start_values``; not for the grid).

Resuming replays, it does not restore: a run always starts a fresh study with the same seeded
sampler and asks it for trials 1, 2, ...; a trial whose fingerprint is in the cache is answered
from there in milliseconds, with the value it had. The sampler then sees exactly the history
(same values, same order, same random draws) an uninterrupted run gave it, so it proposes the
same next trial, and a killed search resumes where it stopped; a re-run with more trials
replays the first ones and measures only the new ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from workbench.merge_search.cache import TrialCache, trial_key
from workbench.merge_search.model import MergedModel
from workbench.merge_search.objective import Objective
from workbench.merge_search.space import SearchSpec


@dataclass
class TrialRecord:
    number: int  # 1-based
    values: dict[str, float]  # searched dimension -> value
    terms: dict[str, float]  # objective term label -> value as it enters
    objective: float
    seconds: float  # merge + measurement, when it was measured
    cached: bool
    key: str


@dataclass
class StudyResult:
    records: list[TrialRecord]
    study: object  # the optuna study, for parameter importances
    labels: list[str]  # searched dimensions, in order
    term_labels: list[str]

    @property
    def best(self) -> TrialRecord:
        return min(self.records, key=lambda r: (r.objective, r.number))


def make_sampler(spec: SearchSpec):
    import optuna

    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=spec.seed)
    if spec.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=spec.seed, warn_independent_sampling=False)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    return optuna.samplers.GridSampler(spec.grid(), seed=spec.seed)


def grid_size(spec: SearchSpec) -> int:
    size = 1
    for values in spec.grid().values():
        size *= len(values)
    return size


@dataclass
class _Loop:
    """The state one search carries from trial to trial."""

    spec: SearchSpec
    merged: MergedModel
    objective: Objective
    cache: TrialCache
    input_fingerprints: dict[str, str]
    measurement: dict
    trials: int
    log: object
    bar: object
    records: list[TrialRecord] = field(default_factory=list)

    def __call__(self, trial) -> float:
        from workbench.merge import load_config

        values = {}
        for dim in self.spec.dimensions:
            for label in dim.labels():
                values[label] = trial.suggest_float(label, dim.low, dim.high)
        config = self.spec.trial_config(values)
        key = trial_key(config, self.input_fingerprints, self.measurement)
        stored = self.cache.get(key)
        if stored is not None and set(stored["terms"]) == set(self.objective.labels):
            terms, seconds, cached = stored["terms"], stored["seconds"], True
        else:
            started = time.perf_counter()
            self.merged.load(load_config(config))
            terms = self.objective.measure(self.merged.model)
            seconds = time.perf_counter() - started
            cached = False
            self.cache.put(key, {"values": values, "terms": terms, "seconds": seconds, "config": config})
        record = TrialRecord(trial.number + 1, values, terms, self.objective.combine(terms), seconds, cached, key)
        self.records.append(record)
        self._report(record)
        return record.objective

    def _report(self, record: TrialRecord) -> None:
        best = min(self.records, key=lambda r: (r.objective, r.number))
        shown = "  ".join(f"{label}={value:.4g}" for label, value in record.values.items())
        timing = "cached" if record.cached else f"{record.seconds:.1f} s"
        self.log(f"trial {record.number}/{self.trials}  {shown}  objective {record.objective:.4f}  "
                 f"best {best.objective:.4f} (trial {best.number})  [{timing}]")
        self.bar.update(1)


def run_study(spec: SearchSpec, merged: MergedModel, objective: Objective, cache: TrialCache,
              input_fingerprints: dict[str, str], *, log, progress: bool) -> StudyResult:
    """Run ``spec.trials`` trials (all of the grid at most) and return every trial's record.
    ``log`` gets one line per trial (with a progress bar, print it with ``tqdm.write``)."""
    import optuna
    from tqdm import tqdm

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=make_sampler(spec))
    start = spec.start_values() if spec.sampler != "grid" else None
    if start is not None:
        study.enqueue_trial(start)
    trials = min(spec.trials, grid_size(spec)) if spec.sampler == "grid" else spec.trials
    with tqdm(total=trials, desc="merge-search", unit="trial", disable=not progress) as bar:
        loop = _Loop(spec, merged, objective, cache, input_fingerprints, objective.measurement(), trials,
                     log, bar)
        study.optimize(loop, n_trials=trials)
    return StudyResult(loop.records, study, spec.labels(), objective.labels)
