"""Read a recipe YAML, expand its matrices, apply overrides and validate all of it at once.

A recipe has a ``name``, optional ``defaults`` (per step kind, under every step of that
kind) and ``steps``: each an ``id`` and one step kind with its parameters, optionally a
``matrix`` (parameter -> list of values: one variant per combination, named <id>-<values>).
docs/recipes.md shows one. Inputs are named by step id or by a path relative to the recipe
file. Every problem found is reported together, each with its line, step id and key, before
anything runs: the structure here, the parameters' types and inputs through each step's
kind (``workbench.recipe.kinds``), then the kind's engine's own validation.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

from workbench.errors import ConfigError, WorkbenchError, did_you_mean
from workbench.recipe.inputs import Inputs
from workbench.recipe.kinds import KINDS, RUNNER_OWNED, StepKind
from workbench.recipe.params import TypeMismatch, coerce
from workbench.recipe.problems import Problems
from workbench.recipe.refs import Ref, WithAdapter, iter_refs
from workbench.yaml_io import Lines, parse_yaml, read_yaml

TOP_KEYS = ("name", "description", "defaults", "steps")
STEP_KEYS = ("id", "matrix")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$")

__all__ = ["Recipe", "Ref", "Step", "WithAdapter", "build_recipe", "iter_refs", "load_recipe"]


@dataclass
class Step:
    id: str
    kind: str
    params: dict  # coerced values; checkpoint inputs are Ref or Path, data files Path
    group: str  # the id as written, before matrix expansion
    launch: dict = field(default_factory=dict)  # step-level launch options of its kind

    @property
    def spec(self) -> StepKind:
        return KINDS[self.kind]

    @property
    def dependencies(self) -> list[str]:
        return list(dict.fromkeys(ref.step for ref in iter_refs(self.params)))


@dataclass
class Recipe:
    name: str
    path: Path
    steps: dict[str, Step]  # in topological order

    def downstream(self, step_id: str) -> list[str]:
        """The step and every step that depends on it, in order."""
        hit = {step_id}
        for step in self.steps.values():
            if any(dep in hit for dep in step.dependencies):
                hit.add(step.id)
        return [s for s in self.steps if s in hit]

    def upstream_model_source(self, step_id: str) -> str | None:
        """The first step upstream of ``step_id`` (breadth first) whose kind brings a model
        into the recipe (``StepKind.brings_model``)."""
        pending, seen = list(self.steps[step_id].dependencies), set()
        while pending:
            current = self.steps[pending.pop(0)]
            if current.id in seen:
                continue
            seen.add(current.id)
            if current.spec.brings_model:
                return current.id
            pending.extend(current.dependencies)
        return None


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Parse, expand and validate; raises one ConfigError listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file does not exist")
    raw, lines = read_yaml(path, lines=True)
    return build_recipe(raw, path, overrides, lines)


def build_recipe(raw, path: Path, overrides: list[str] = (), lines: Lines | None = None) -> Recipe:
    problems = Problems(path)
    lines = lines or Lines(None)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe is a mapping with 'name' and 'steps'")
    for key in raw:
        if key not in TOP_KEYS:
            problems.add(f"unknown top-level key '{key}'{did_you_mean(str(key), TOP_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not ID_PATTERN.match(name):
        problems.add("'name' must be a word of letters, digits, '-', '_' or '.' (it names runs/<name>/)")
    defaults = _check_defaults(raw.get("defaults") or {}, problems)
    raw_steps = raw.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        problems.add("'steps' must be a non-empty list")
        problems.raise_if_any()
    written = _parse_steps(raw_steps, defaults, lines, problems)
    steps = _expand_matrices(written, problems)
    _apply_overrides(steps, overrides, problems)
    for step in steps:
        _check_parameters(step, problems)
    base_dir = path.resolve().parent
    inputs = Inputs(steps, base_dir, problems)
    for step in steps:
        step.spec.resolve(step, inputs, problems)
    for step in steps:
        if not problems.about(step.id, step.group):
            _validate_with_engine(step, str(base_dir), problems)
    problems.raise_if_any()
    ordered = _topological_order(steps, problems)
    problems.raise_if_any()
    return Recipe(name=name, path=path, steps={s.id: s for s in ordered})


@dataclass
class _Written:
    id: str
    kind: str
    params: dict
    matrix: dict
    launch: dict


def _check_defaults(defaults, problems: Problems) -> dict:
    if not isinstance(defaults, dict):
        problems.add("'defaults' must map a step kind to its default parameters")
        return {}
    for kind, params in defaults.items():
        if kind not in KINDS:
            problems.add(f"'defaults' names unknown step kind '{kind}'{did_you_mean(str(kind), KINDS)}")
        elif not isinstance(params, dict):
            problems.add(f"'defaults.{kind}' must be a mapping of parameters")
    return {k: v for k, v in defaults.items() if k in KINDS and isinstance(v, dict)}


def _normalize_key(key) -> str:
    """CLI spelling (lora-rank) and Python spelling (lora_rank) are the same key."""
    return str(key).replace("-", "_")


def _normalize_keys(params: dict) -> dict:
    return {_normalize_key(k): v for k, v in params.items()}


def _parse_steps(raw_steps: list, defaults: dict, lines: Lines, problems: Problems) -> list[_Written]:
    written = []
    for index, raw in enumerate(raw_steps):
        label = f"steps[{index}]"
        if not isinstance(raw, dict):
            problems.add(f"{label} must be a mapping with 'id' and one step kind")
            continue
        step_id = raw.get("id")
        if not isinstance(step_id, str) or not ID_PATTERN.match(step_id):
            problems.add(f"{label} needs an 'id' of letters, digits, '-', '_' or '.'")
            continue
        label = step_id
        problems.note_origin(label, None, lines.of("steps", index))
        keys = [k for k in raw if k not in STEP_KEYS]
        known = [k for k in keys if k in KINDS]
        options = KINDS[known[0]].launch_options if len(known) == 1 else {}
        unknown = [k for k in keys if k not in KINDS and _normalize_key(k) not in options]
        for key in unknown:
            takers = [name for name, spec in KINDS.items() if _normalize_key(key) in spec.launch_options]
            if len(known) == 1 and takers:
                problems.note_origin(label, _normalize_key(key), lines.of("steps", index, key))
                problems.add(f"{known[0]} steps take no launch option '{key}' (only {', '.join(takers)} "
                             "steps do)", label, _normalize_key(key))
                continue
            problems.add(f"unknown step kind or key '{key}' (step kinds: {', '.join(KINDS)})"
                         f"{did_you_mean(str(key), [*KINDS, *STEP_KEYS, *options])}", label)
        if len(known) != 1:
            if not unknown:
                problems.add(f"needs exactly one step kind ({', '.join(KINDS)}), found "
                             f"{', '.join(known) or 'none'}", label)
            continue
        kind = known[0]
        params = raw[kind]
        if not isinstance(params, dict):
            problems.add(f"'{kind}' must be a mapping of parameters", label)
            continue
        matrix = raw.get("matrix") or {}
        if not isinstance(matrix, dict) or not all(isinstance(v, list) and v for v in matrix.values()):
            problems.add("'matrix' must map parameter names to non-empty lists of values", label, "matrix")
            matrix = {}
        launch_keys = [k for k in raw if _normalize_key(k) in options]
        for where, keys in ((("defaults", kind), defaults.get(kind, {})), (("steps", index, kind), params),
                            (("steps", index, "matrix"), matrix), (("steps", index), launch_keys)):
            for key in keys:  # the line each value was written on, for the problems found later
                problems.note_origin(label, _normalize_key(key), lines.of(*where, key))
        launch = {_normalize_key(k): raw[k] for k in launch_keys}
        merged = {**copy.deepcopy(_normalize_keys(defaults.get(kind, {}))), **_normalize_keys(params)}
        written.append(_Written(step_id, kind, merged, _normalize_keys(matrix), launch))
    return written


def _apply_overrides(steps: list[Step], overrides: list[str], problems: Problems) -> None:
    """--set STEP.KEY=VALUE (VALUE read as YAML; KEY may be dotted into nested mappings).
    STEP is a step id, or the written id of a matrix step (then every variant gets it)."""
    ids = {s.id for s in steps} | {s.group for s in steps}
    for override in overrides:
        target, sep, value_text = override.partition("=")
        matches = sorted((i for i in ids if target.startswith(i + ".")), key=len, reverse=True)
        if not sep or not matches:
            hint = did_you_mean(target.split(".", 1)[0], ids)
            problems.add(f"--set '{override}': expected STEP.KEY=VALUE with a step id of this recipe{hint}")
            continue
        keys = [_normalize_key(k) for k in target[len(matches[0]) + 1:].split(".")]
        try:
            value = parse_yaml(value_text, f"--set '{override}'") if value_text.strip() else ""
        except ConfigError as exc:
            problems.add(str(exc))
            continue
        for step in steps:
            if matches[0] in (step.id, step.group):
                for name in {step.id, matches[0]}:  # parameter problems name the written step
                    problems.note_origin(name, keys[0], f"--set '{override}'")
                where = step.launch if keys[0] in step.spec.launch_options else step.params
                _set_nested(where, keys, value, override, step.id, problems)


def _set_nested(params: dict, keys: list[str], value, override: str, step_id: str, problems: Problems) -> None:
    node = params
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            problems.add(f"--set '{override}': '{key}' is not a mapping", step_id)
            return
    node[keys[-1]] = value


def _expand_matrices(written: list[_Written], problems: Problems) -> list[Step]:
    steps = []
    for w in written:
        if not w.matrix:
            steps.append(Step(w.id, w.kind, copy.deepcopy(w.params), group=w.id, launch=dict(w.launch)))
            continue
        keys = list(w.matrix)
        for values in itertools.product(*(w.matrix[k] for k in keys)):
            suffix = "-".join(_id_part(v) for v in values)
            variant = dict(zip(keys, values))
            step_id = f"{w.id}-{suffix}"
            problems.alias(step_id, w.id)
            steps.append(Step(step_id, w.kind, {**copy.deepcopy(w.params), **variant}, group=w.id,
                              launch=dict(w.launch)))
    seen = set()
    for step in steps:
        if step.id in seen:
            problems.add("duplicate step id (matrix variants are named <id>-<value>)", step.id)
        seen.add(step.id)
    return steps


def _id_part(value) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(value).lower() if isinstance(value, bool) else str(value))


def _check_parameters(step: Step, problems: Problems) -> None:
    """Runner-owned, unknown and missing keys; values coerced to their declared types."""
    spec = step.spec
    try:
        allowed = {k: v for k, v in spec.parameters().items() if k not in spec.launch_options}
    except ImportError as exc:
        problems.add(f"the {step.kind} engine is not available ({exc})", step.group)
        return
    for key in list(step.params):
        if key in RUNNER_OWNED:
            problems.add(f"'{key}' is set by the runner (outputs go to runs/<name>/<step-id>/)", step.group, key)
            del step.params[key]
        elif key in spec.launch_options:
            problems.add(f"'{key}' is a launch option: write it beside the step's 'id', not under "
                         f"'{step.kind}'", step.group, key)
            del step.params[key]
        elif key not in allowed:
            problems.add(f"unknown parameter for {step.kind}{did_you_mean(key, allowed)}", step.group, key)
            del step.params[key]
        elif not spec.free_form:
            _coerce_into(step.params, key, allowed[key], step, problems)
    for key in step.launch:
        _coerce_into(step.launch, key, spec.launch_options[key], step, problems)
    for key in spec.required:
        if step.params.get(key) in (None, "", []):
            problems.add(f"missing required parameter '{key}'", step.group, key)
    spec.check(step, problems)


def _coerce_into(values: dict, key: str, annotation, step: Step, problems: Problems) -> None:
    try:
        values[key] = coerce(values[key], annotation)
    except TypeMismatch as exc:
        problems.add(f"expected {exc}", step.group, key)


def _validate_with_engine(step: Step, stand_in: str, problems: Problems) -> None:
    """The engine's own checks (ranges, choices, combinations), so that a bad value stops the
    recipe before any step runs, not when its step's turn comes."""
    try:
        step.spec.validate(step, stand_in)
    except WorkbenchError as exc:
        message = str(exc)
        first_word = message.split(" ", 1)[0]
        problems.add(message, step.id, first_word if first_word in {**step.params, **step.launch} else None)


def _topological_order(steps: list[Step], problems: Problems) -> list[Step]:
    """Kahn's algorithm, keeping the written order among ready steps; names a cycle."""
    by_id = {s.id: s for s in steps}
    remaining = {s.id: set(s.dependencies) for s in steps}
    ordered = []
    while remaining:
        ready = [i for i in by_id if i in remaining and not remaining[i]]
        if not ready:
            cycle = " -> ".join(_find_cycle(remaining))
            problems.add(f"steps depend on each other in a cycle: {cycle}")
            return ordered
        for step_id in ready:
            ordered.append(by_id[step_id])
            del remaining[step_id]
            for deps in remaining.values():
                deps.discard(step_id)
    return ordered


def _find_cycle(remaining: dict[str, set[str]]) -> list[str]:
    node = next(iter(remaining))
    path = []
    while node not in path:
        path.append(node)
        node = next(iter(remaining[node]))
    return path[path.index(node):] + [node]
