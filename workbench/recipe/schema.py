"""Read a recipe YAML, expand its matrices, apply overrides and validate all of it at once.

A recipe::

    name: tiny-chain
    defaults:                     # per step kind, under every step of that kind
      sft: {epochs: 1}
    steps:
      - id: base
        import: {tiny: {arch: llama, seed: 0}}
      - id: expert
        sft: {model: base, data: data/a.jsonl, lr: 1e-3}
        matrix: {lr: [1e-3, 3e-4]}  # -> steps expert-1e-3 and expert-3e-4

Inputs are named by step id or by a path relative to the recipe file. Every problem found
is reported together, each with its step id and key, before anything runs.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from workbench.errors import ConfigError, did_you_mean
from workbench.recipe.kinds import KINDS, RUNNER_OWNED
from workbench.recipe.types import TypeMismatch, coerce

TOP_KEYS = ("name", "description", "defaults", "steps")
STEP_KEYS = ("id", "matrix")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$")
NON_MODEL_TOKENIZER_SOURCES = ("base", "union")


@dataclass(frozen=True)
class Ref:
    """A parameter value naming another step's output checkpoint, or ``path`` inside it."""

    step: str
    path: str = ""


@dataclass(frozen=True)
class WithAdapter:
    """A merge input written MODEL+LORA (mergekit's syntax): a checkpoint and a LoRA adapter
    directory, each a Ref or a Path; the merge engine merges the adapter into it first."""

    model: Ref | Path
    adapter: Ref | Path


@dataclass
class Step:
    id: str
    kind: str
    params: dict  # coerced values; checkpoint inputs are Ref or Path, data files Path
    group: str  # the id as written, before matrix expansion

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


def iter_refs(value):
    if isinstance(value, Ref):
        yield value
    elif isinstance(value, WithAdapter):
        yield from iter_refs([value.model, value.adapter])
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_refs(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from iter_refs(item)


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Parse, expand and validate; raises one ConfigError listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return build_recipe(raw, path, overrides)


def build_recipe(raw, path: Path, overrides: list[str] = ()) -> Recipe:
    problems = Problems(path)
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
    written = _parse_steps(raw_steps, defaults, problems)
    steps = _expand_matrices(written, problems)
    _apply_overrides(steps, overrides, problems)
    groups: dict[str, list[str]] = {}
    for step in steps:
        groups.setdefault(step.group, []).append(step.id)
    for step in steps:
        _check_parameters(step, problems)
    adapters = {s.id for s in steps if s.kind == "sft" and s.params.get("lora_rank")}
    for step in steps:
        _resolve_inputs(step, groups, adapters, path.resolve().parent, problems)
    problems.raise_if_any()
    ordered = _topological_order(steps, problems)
    problems.raise_if_any()
    return Recipe(name=name, path=path, steps={s.id: s for s in ordered})


class Problems:
    """Collects every problem so the user sees all of them in one run."""

    def __init__(self, path: Path):
        self.path = path
        self.items: list[str] = []

    def add(self, message: str, step: str | None = None, key: str | None = None) -> None:
        where = (f"step '{step}'" if step else "") + (f", key '{key}'" if key else "")
        item = f"{where}: {message}" if where else message
        if item not in self.items:  # matrix variants share their written step's problems
            self.items.append(item)

    def raise_if_any(self) -> None:
        if len(self.items) == 1:
            raise ConfigError(f"{self.path}: {self.items[0]}")
        if self.items:
            lines = "\n  ".join(self.items)
            raise ConfigError(f"{self.path}: {len(self.items)} problems:\n  {lines}")


@dataclass
class _Written:
    id: str
    kind: str
    params: dict
    matrix: dict


def _check_defaults(defaults, problems: Problems) -> dict:
    if not isinstance(defaults, dict):
        problems.add("'defaults' must map a step kind to its default parameters")
        return {}
    for kind, params in defaults.items():
        if kind not in KINDS:
            problems.add(f"'defaults' names unknown step kind '{kind}'{did_you_mean(str(kind), KINDS)}")
        elif not isinstance(params, dict):
            problems.add(f"'defaults.{kind}' must be a mapping of parameters")
    return {k: _normalize_keys(v) for k, v in defaults.items() if k in KINDS and isinstance(v, dict)}


def _normalize_keys(params: dict) -> dict:
    """CLI spelling (lora-rank) and Python spelling (lora_rank) are the same key."""
    return {str(k).replace("-", "_"): v for k, v in params.items()}


def _parse_steps(raw_steps: list, defaults: dict, problems: Problems) -> list[_Written]:
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
        kinds = [k for k in raw if k not in STEP_KEYS]
        unknown = [k for k in kinds if k not in KINDS]
        for key in unknown:
            problems.add(f"unknown step kind or key '{key}' (step kinds: {', '.join(KINDS)})"
                         f"{did_you_mean(str(key), [*KINDS, *STEP_KEYS])}", label)
        known = [k for k in kinds if k in KINDS]
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
        merged = {**copy.deepcopy(defaults.get(kind, {})), **_normalize_keys(params)}
        written.append(_Written(step_id, kind, merged, _normalize_keys(matrix)))
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
        keys = target[len(matches[0]) + 1:].replace("-", "_").split(".")
        value = yaml.safe_load(value_text) if value_text.strip() else ""
        for step in steps:
            if matches[0] in (step.id, step.group):
                _set_nested(step.params, keys, value, override, step.id, problems)


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
            steps.append(Step(w.id, w.kind, copy.deepcopy(w.params), group=w.id))
            continue
        keys = list(w.matrix)
        for values in itertools.product(*(w.matrix[k] for k in keys)):
            suffix = "-".join(_id_part(v) for v in values)
            variant = dict(zip(keys, values))
            steps.append(Step(f"{w.id}-{suffix}", w.kind, {**copy.deepcopy(w.params), **variant}, group=w.id))
    seen = set()
    for step in steps:
        if step.id in seen:
            problems.add("duplicate step id (matrix variants are named <id>-<value>)", step.id)
        seen.add(step.id)
    return steps


def _id_part(value) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(value).lower() if isinstance(value, bool) else str(value))


def _check_parameters(step: Step, problems: Problems) -> None:
    spec = KINDS[step.kind]
    try:
        allowed = spec.parameters()
    except ImportError as exc:
        problems.add(f"the {step.kind} engine is not available ({exc})", step.group)
        return
    for key in list(step.params):
        if key in RUNNER_OWNED:
            problems.add(f"'{key}' is set by the runner (outputs go to runs/<name>/<step-id>/)", step.group, key)
            del step.params[key]
        elif key not in allowed:
            problems.add(f"unknown parameter for {step.kind}{did_you_mean(key, allowed)}", step.group, key)
            del step.params[key]
        elif not spec.free_form:
            try:
                step.params[key] = coerce(step.params[key], allowed[key])
            except TypeMismatch as exc:
                problems.add(f"expected {exc}", step.group, key)
    for key in spec.required:
        if step.params.get(key) in (None, "", []):
            problems.add(f"missing required parameter '{key}'", step.group, key)
    if step.kind == "import":
        sources = [k for k in ("path", "gguf", "tiny") if step.params.get(k) is not None]
        if len(sources) != 1:
            problems.add("import needs exactly one source: path (a checkpoint), gguf (a file) or tiny "
                         "(a random model)", step.group)


def _resolve_inputs(step: Step, groups: dict[str, list[str]], adapters: set[str], base_dir: Path,
                    problems: Problems) -> None:
    """Step ids become Ref, paths become absolute Paths that must exist. ``adapters``: the
    steps that write a LoRA adapter."""
    spec = KINDS[step.kind]
    step_ids = {i for ids in groups.values() for i in ids}

    def resolve(value, key: str, many: bool):
        if not isinstance(value, str):
            problems.add(f"expected a step id or a checkpoint path, got {type(value).__name__}", step.id, key)
            return value
        if value in groups and groups[value] != [value]:
            if value == step.group:
                problems.add("a step cannot use its own output", step.id, key)
            elif many:
                return [Ref(v) for v in groups[value]]
            else:
                problems.add(f"'{value}' is a matrix of steps; name one of {', '.join(groups[value])}",
                             step.id, key)
            return value
        if value in step_ids:
            if value == step.id:
                problems.add("a step cannot use its own output", step.id, key)
            return Ref(value)
        candidate = (base_dir / value).resolve()
        if candidate.exists():
            return candidate
        problems.add(f"'{value}' is neither a step id nor an existing path (relative to "
                     f"{base_dir}){did_you_mean(value, step_ids | set(groups))}", step.id, key)
        return value

    for key in spec.checkpoint_keys:
        value = step.params.get(key)
        if value is None:
            continue
        if isinstance(value, list):
            resolved = []
            for item in value:
                got = resolve(item, key, many=True)
                resolved.extend(got if isinstance(got, list) else [got])
            step.params[key] = resolved
        else:
            step.params[key] = resolve(value, key, many=False)
    if step.kind == "merge":
        _resolve_merge_models(step, resolve, adapters, problems)
        _check_merge(step, base_dir, problems)
    for key in spec.cache_keys:
        value = step.params.get(key)
        if value is None:
            continue
        from workbench.distill.cache import MANIFEST

        step.params[key] = candidate = (base_dir / str(value)).resolve()
        if not (candidate / MANIFEST).is_file():
            problems.add(f"teacher cache '{value}' does not exist (no {MANIFEST} in {candidate}; make one "
                         "with `workbench distill cache-teacher`)", step.id, key)
    for key in spec.data_keys():
        value = step.params.get(key)
        if value is None:
            continue
        paths = []
        for item in value if isinstance(value, list) else [value]:
            candidate = (base_dir / str(item)).resolve()
            if not candidate.is_file():
                problems.add(f"data file '{item}' does not exist (relative to {base_dir})", step.id, key)
            paths.append(candidate)
        step.params[key] = paths if isinstance(value, list) else paths[0]


def _resolve_merge_models(step: Step, resolve, adapters: set[str], problems: Problems) -> None:
    """Model names in the mergekit schema: models[].model, base_model, tokenizer_source and
    slices[].sources[].model may be step ids, each side of MODEL+LORA too. A step id after
    '+' stands for the adapter that step wrote (an sft step with lora_rank)."""
    from workbench.sft.config import ADAPTER_DIR

    def resolve_model(value, key: str):
        if not isinstance(value, str) or "+" not in value:
            return resolve(value, key, many=False)
        model, _, adapter = value.partition("+")
        if not model or not adapter or "+" in adapter:
            problems.add(f"'{value}' is neither MODEL nor MODEL+LORA", step.id, key)
            return value
        resolved = resolve(adapter, key, many=False)
        if isinstance(resolved, Ref):
            if resolved.step not in adapters:
                problems.add(f"'{adapter}' after '+' must be a LoRA adapter, but step '{adapter}' writes "
                             "none (an sft step with lora_rank > 0 does)", step.id, key)
            resolved = Ref(resolved.step, ADAPTER_DIR)
        elif isinstance(resolved, Path) and not (resolved / "adapter_config.json").is_file():
            problems.add(f"'{adapter}' after '+' is not a LoRA adapter (no adapter_config.json)", step.id, key)
        return WithAdapter(resolve(model, key, many=False), resolved)

    params = step.params
    entries = list(params.get("models") or [])
    for sl in params.get("slices") or []:
        entries.extend(sl.get("sources", []) if isinstance(sl, dict) else [])
    for i, entry in enumerate(entries):
        if isinstance(entry, dict) and "model" in entry:
            entry["model"] = resolve_model(entry["model"], f"models[{i}].model")
        else:
            problems.add("each entry needs a 'model'", step.id, f"models[{i}]")
    if params.get("base_model") is not None:
        params["base_model"] = resolve_model(params["base_model"], "base_model")
    source = params.get("tokenizer_source")
    if isinstance(source, str) and source not in NON_MODEL_TOKENIZER_SOURCES:
        params["tokenizer_source"] = resolve_model(source, "tokenizer_source")


def _check_merge(step: Step, base_dir: Path, problems: Problems) -> None:
    """The merge engine's own validation (methods, parameters, ranges), with inputs from
    other steps standing in as existing directories: they are built before the merge runs."""
    from workbench.merge.config import validate_config

    def stand_in(value):
        if isinstance(value, (Ref, Path, WithAdapter)):
            return str(base_dir)
        if isinstance(value, dict):
            return {k: stand_in(v) for k, v in value.items()}
        if isinstance(value, list):
            return [stand_in(v) for v in value]
        return value

    try:
        validate_config(stand_in(step.params), f"step '{step.id}'")
    except ConfigError as exc:
        problems.add(str(exc))


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
