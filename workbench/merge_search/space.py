"""The ``search:`` block of a SEARCH.yml: which merge parameters to tune and over which ranges,
the objective, and the optimizer settings; all checked before anything is read or written.

A SEARCH.yml is a mergekit config (``workbench.merge``'s schema) plus::

    search:
      parameters:                      # PATH: RANGE
        models[0].parameters.weight: {low: 0.2, high: 1.5}
        models[1].parameters.density: {low: 0.1, high: 1.0}
        parameters.lambda: {low: 0.5, high: 2.0, layers: 3}   # a 3-point layer gradient
      objective:
        - {data: valid.jsonl, weight: 1.0}                     # mean loss (default)
        - {data: other.jsonl, metric: exact_match}             # enters as 1 - match
        - {data: valid.jsonl, metric: kl, reference: CKPT}     # KL(reference || merge)
      trials: 20
      sampler: tpe                     # tpe | cmaes | random | grid
      seed: 0

A PATH is ``parameters.NAME`` (global) or ``models[I].parameters.NAME`` (one model's); the
trial's value replaces whatever the config set there. ``layers: K`` searches K values that
the merge interpolates across the decoder layers (mergekit's gradient semantics). The grid
sampler tries ``points`` (default 3) evenly spaced values per dimension.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError, did_you_mean
from workbench.merge import INPUT, NON_BASE, SHARED, MergeConfig, ModelRef, validate_config

SAMPLERS = ("tpe", "cmaes", "random", "grid")
METRICS = ("loss", "exact_match", "kl")
# The parameters a search may tune, per native method (the others are flags, or unused:
# task_arithmetic accepts a density but never trims).
SEARCHABLE = {
    "linear": ("weight",),
    "slerp": ("t",),
    "ties": ("weight", "density", "lambda"),
    "task_arithmetic": ("weight", "lambda"),
}
SEARCH_KEYS = ("parameters", "objective", "trials", "sampler", "seed", "batch_size", "max_length",
               "max_new_tokens")
RANGE_KEYS = ("low", "high", "layers", "points")
TERM_KEYS = ("data", "weight", "metric", "reference")
DEFAULT_GRID_POINTS = 3
_PATH = re.compile(r"^(?:models\[(?P<model>\d+)\]\.)?parameters\.(?P<name>[A-Za-z_][A-Za-z0-9_]*)$")


@dataclass(frozen=True)
class Dimension:
    """One searched parameter: where it goes in the config and its range. ``layers`` > 1 is a
    gradient of that many values (dimensions ``PATH[0]`` .. ``PATH[K-1]``)."""

    path: str
    name: str
    model: int | None  # None: the global parameters
    low: float
    high: float
    layers: int = 1
    points: int = DEFAULT_GRID_POINTS

    def labels(self) -> list[str]:
        """The optimizer's dimension names, one per value searched."""
        return [self.path] if self.layers == 1 else [f"{self.path}[{k}]" for k in range(self.layers)]


@dataclass(frozen=True)
class Term:
    data: Path
    weight: float = 1.0
    metric: str = "loss"
    reference: Path | None = None  # metric 'kl' only


@dataclass
class SearchSpec:
    """A validated search: the merge config (without ``search:``) and what to tune."""

    merge: MergeConfig
    dimensions: list[Dimension]
    objective: list[Term]
    trials: int
    sampler: str = "tpe"
    seed: int = 0
    batch_size: int = 8
    max_length: int = 1024
    max_new_tokens: int = 64
    source: str = "search"
    raw: dict = field(default_factory=dict)  # the search block as given

    def labels(self) -> list[str]:
        return [label for d in self.dimensions for label in d.labels()]

    def trial_config(self, values: dict[str, float]) -> dict:
        """The merge config (raw mergekit YAML) with a trial's values put in place."""
        config = copy.deepcopy(self.merge.raw)
        for dim in self.dimensions:
            value = [values[label] for label in dim.labels()]
            setting = value[0] if dim.layers == 1 else value
            if dim.model is None:
                config.setdefault("parameters", {})
                config["parameters"] = dict(config["parameters"] or {}, **{dim.name: setting})
            else:
                entry = config["models"][dim.model]
                entry["parameters"] = dict(entry.get("parameters") or {}, **{dim.name: setting})
        return config

    def start_values(self) -> dict[str, float] | None:
        """The config as written, as a trial: each searched parameter's own setting (a
        model's, else the global one, else the method's default), a scalar or a K-point list,
        when every one is in its range; else None. The search tries it first, so it never
        ends worse on its objective than the merge it started from."""
        values = {}
        for dim in self.dimensions:
            param = self.merge.spec.parameter(dim.name)
            scopes = [self.merge.parameters] if dim.model is None else \
                [self.merge.models[dim.model].parameters, self.merge.parameters]
            setting = next((scope[dim.name] for scope in scopes if dim.name in scope), param.default)
            if isinstance(setting, float):
                setting = [setting] * dim.layers
            if not isinstance(setting, list) or len(setting) != dim.layers \
                    or not all(isinstance(v, float) and dim.low <= v <= dim.high for v in setting):
                return None
            values.update(zip(dim.labels(), setting))
        return values

    def grid(self) -> dict[str, list[float]]:
        """Each dimension's grid values (sampler 'grid'): ``points`` evenly spaced from low to
        high, rounded to 12 digits so that 0.2 + 0.4 reads 0.6."""
        grid = {}
        for dim in self.dimensions:
            step = (dim.high - dim.low) / (dim.points - 1)
            values = [float(f"{dim.low + i * step:.12g}") for i in range(dim.points - 1)] + [dim.high]
            for label in dim.labels():
                grid[label] = values
        return grid


def parse_search(raw: dict, source: str, trials: int | None = None) -> SearchSpec:
    """A SearchSpec from a parsed SEARCH.yml (merge config + ``search:``); ConfigError names
    the file and key of the first problem. ``trials`` (the --trials option) replaces
    ``search.trials``, which may then be left out."""
    raw = dict(raw)
    block = raw.pop("search", None)
    if not isinstance(block, dict):
        raise ConfigError(f"{source}: a 'search:' block is required (parameters, objective, trials, sampler, "
                          "seed); without one, use `workbench merge`")
    merge = validate_config(raw, source)
    where = f"{source}: search"
    _check_keys(block, SEARCH_KEYS, where)
    sampler = _choice(block.get("sampler", "tpe"), SAMPLERS, f"{where}.sampler", "sampler")
    spec = SearchSpec(
        merge=merge,
        dimensions=_dimensions(block.get("parameters"), merge, sampler, f"{where}.parameters"),
        objective=_objective(block.get("objective"), f"{where}.objective"),
        trials=check_trials(trials, "--trials") if trials is not None else
        check_trials(block.get("trials"), f"{where}.trials"),
        sampler=sampler,
        seed=_integer(block.get("seed", 0), f"{where}.seed", minimum=0),
        batch_size=_integer(block.get("batch_size", 8), f"{where}.batch_size", minimum=1),
        max_length=_integer(block.get("max_length", 1024), f"{where}.max_length", minimum=2),
        max_new_tokens=_integer(block.get("max_new_tokens", 64), f"{where}.max_new_tokens", minimum=1),
        source=source,
        raw=block,
    )
    return spec


def check_trials(value: Any, where: str) -> int:
    if value is None:
        raise ConfigError(f"{where}: how many trials to run is required (a whole number >= 1)")
    return _integer(value, where, minimum=1)


def _check_keys(block: dict, known: tuple[str, ...], where: str) -> None:
    for key in block:
        if key not in known:
            raise ConfigError(f"{where}: unknown key '{key}'{did_you_mean(str(key), known)} "
                              f"(known: {', '.join(known)})")


def _choice(value: Any, choices: tuple[str, ...], where: str, what: str) -> str:
    if value not in choices:
        raise ConfigError(f"{where}: unknown {what} {value!r}{did_you_mean(str(value), choices)} "
                          f"(expected one of {', '.join(choices)})")
    return value


def _integer(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: expected a whole number >= {minimum}, got {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _dimensions(block: Any, merge: MergeConfig, sampler: str, where: str) -> list[Dimension]:
    if not isinstance(block, dict) or not block:
        raise ConfigError(f"{where}: name at least one parameter to search, e.g. "
                          "'models[0].parameters.weight: {low: 0.2, high: 1.5}'")
    if merge.method not in SEARCHABLE:
        methods = "; ".join(f"{method}: {', '.join(names)}" for method, names in SEARCHABLE.items())
        raise ConfigError(f"{merge.source}: merge_method '{merge.method}' is not searchable (searchable "
                          f"methods and parameters: {methods})")
    dimensions = [_dimension(str(path), spec, merge, sampler, f"{where}.{path}") for path, spec in block.items()]
    for dim in dimensions:
        _check_effective(dim, dimensions, merge, where)
    return dimensions


def _dimension(path: str, spec: Any, merge: MergeConfig, sampler: str, where: str) -> Dimension:
    method = merge.spec
    match = _PATH.match(path)
    if match is None:
        raise ConfigError(f"{where}: names no parameter of the config (expected parameters.NAME or "
                          "models[I].parameters.NAME)")
    name, model = match["name"], match["model"]
    searchable = SEARCHABLE[method.name]
    if name not in searchable:
        known = [p.name for p in method.parameters]
        reason = "is not a parameter of" if name not in known else "cannot be searched in"
        raise ConfigError(f"{where}: '{name}' {reason} {method.name}{did_you_mean(name, searchable)} "
                          f"(searchable: {', '.join(searchable)})")
    param = method.parameter(name)
    if model is not None:
        model = int(model)
        if model >= len(merge.models):
            raise ConfigError(f"{where}: the config has {len(merge.models)} models (models[0] .. "
                              f"models[{len(merge.models) - 1}])")
        if param.scope == SHARED:
            raise ConfigError(f"{where}: '{name}' is one value for all models in {method.name}; search "
                              f"parameters.{name}")
        if param.scope == NON_BASE and merge.models[model].ref == merge.base_model:
            raise ConfigError(f"{where}: models[{model}] is the base_model, whose '{name}' {method.name} "
                              "does not use")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a range {{low: ..., high: ...}}, got {spec!r}")
    _check_keys(spec, RANGE_KEYS, where)
    for key in ("low", "high"):
        if key not in spec:
            raise ConfigError(f"{where}: '{key}' is required")
    low, high = _number(spec["low"], f"{where}.low"), _number(spec["high"], f"{where}.high")
    if low > high:
        raise ConfigError(f"{where}: low ({low:g}) is greater than high ({high:g})")
    param.check(low, f"{where}.low")
    param.check(high, f"{where}.high")
    layers = _integer(spec.get("layers", 1), f"{where}.layers", minimum=1)
    if "points" in spec and sampler != "grid":
        raise ConfigError(f"{where}.points: only the grid sampler uses points (sampler is {sampler})")
    points = _integer(spec.get("points", DEFAULT_GRID_POINTS), f"{where}.points", minimum=2)
    return Dimension(path, name, model, low, high, layers, points)


def _check_effective(dim: Dimension, dimensions: list[Dimension], merge: MergeConfig, where: str) -> None:
    """A global per-model parameter (weight, density) reaches only models that do not set their
    own (mergekit resolves per-model settings first): searching one that reaches no model, or
    a global weight that every model shares while the method normalizes by the weight sum,
    would tune nothing."""
    param = merge.spec.parameter(dim.name)
    if dim.model is not None or param.scope not in (INPUT, NON_BASE):
        return
    users = [i for i, entry in enumerate(merge.models)
             if not (param.scope == NON_BASE and entry.ref == merge.base_model)]
    searched = {d.model for d in dimensions if d.name == dim.name and d.model is not None}
    reached = [i for i in users if i not in searched and dim.name not in merge.models[i].parameters]
    if not reached:
        own = ", ".join(f"models[{i}]" for i in users)
        raise ConfigError(f"{where}.{dim.path}: reaches no model: {own} set their own '{dim.name}', which "
                          f"mergekit uses first; search models[I].parameters.{dim.name} instead, or remove "
                          "the per-model values")
    if dim.name == "weight" and len(reached) == len(users) \
            and merge.parameters.get("normalize", merge.spec.parameter("normalize").default) is True:
        raise ConfigError(f"{where}.{dim.path}: every model would share this weight and {merge.method} "
                          "divides by the weight sum (normalize: true), so it cancels out; search "
                          "per-model weights, or set normalize: false")


def _objective(block: Any, where: str) -> list[Term]:
    if not isinstance(block, list) or not block:
        raise ConfigError(f"{where}: name at least one validation file, e.g. '- {{data: valid.jsonl}}'")
    terms = []
    for i, item in enumerate(block):
        at = f"{where}[{i}]"
        if isinstance(item, str):
            item = {"data": item}
        if not isinstance(item, dict):
            raise ConfigError(f"{at}: expected {{data: FILE, weight: W, metric: {'|'.join(METRICS)}}}")
        _check_keys(item, TERM_KEYS, at)
        if not isinstance(item.get("data"), str) or not item["data"]:
            raise ConfigError(f"{at}: 'data' (a chat JSONL validation file) is required")
        data = Path(item["data"]).expanduser()
        if not data.is_file():
            raise ConfigError(f"{at}.data: '{data}' does not exist" if not data.exists()
                              else f"{at}.data: '{data}' is not a file")
        if data.stat().st_size == 0 or not data.read_text(encoding="utf-8", errors="replace").strip():
            raise ConfigError(f"{at}.data: '{data}' is empty (the objective needs examples)")
        weight = _number(item.get("weight", 1.0), f"{at}.weight")
        if weight <= 0:
            raise ConfigError(f"{at}.weight: must be > 0 (a term with no weight would be measured for "
                              f"nothing), got {weight:g}")
        metric = _choice(item.get("metric", "loss"), METRICS, f"{at}.metric", "metric")
        reference = None
        if metric == "kl":
            if not item.get("reference"):
                raise ConfigError(f"{at}: metric kl needs 'reference' (the checkpoint whose next-token "
                                  "distribution the merge should match)")
            reference = ModelRef.parse(item["reference"], f"{at}.reference").path
            if not reference.is_dir():
                raise ConfigError(f"{at}.reference: '{reference}' is not a checkpoint directory")
        elif "reference" in item:
            raise ConfigError(f"{at}.reference: only metric kl uses a reference (metric is {metric})")
        terms.append(Term(data, weight, metric, reference))
    return terms
