"""mergekit's YAML schema: parsed, validated, and parameters resolved per tensor as mergekit does.

A config names a ``merge_method``, the ``models`` (each a checkpoint path, optionally
``path+lora_path``, with per-model ``parameters``), an optional ``base_model``, global
``parameters``, ``dtype``, ``out_dtype`` and ``tokenizer_source``. A parameter is a number, a
list of numbers interpolated across layers (a layer gradient), or a list of
``{filter, value}`` entries whose first entry with ``filter`` a substring of the tensor name
(or no filter, or ``*``) applies. Resolution follows ``mergekit.config.evaluate_setting`` and
``mergekit.parameter_resolver``: per-model settings first, then global ones, then the default;
shared parameters (``t``, ``normalize``, ``lambda``) come from the global settings only.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError, did_you_mean
from workbench.yaml_io import read_yaml

SHARED = "shared"  # one value per tensor
INPUT = "input"  # one value per input model
NON_BASE = "non_base"  # one value per input model other than the base


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    kind: type  # float or bool
    scope: str
    default: Any = None  # None: required
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # density is in (0, 1]

    def check(self, value: Any, where: str) -> Any:
        """One scalar as mergekit's pydantic types accept it (numbers, or numeric strings such
        as YAML's unquoted 1e-3, for floats; booleans for bools), range-checked."""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: '{self.name}' must be true or false, got {value!r}")
            return value
        try:
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: '{self.name}' must be a number, got {value!r}") from None
        if not math.isfinite(value):
            raise ConfigError(f"{where}: '{self.name}' must be finite, got {value!r}")
        if self.low is None or self.high is None:
            return value
        below = value <= self.low if self.low_open else value < self.low
        if below or value > self.high:
            interval = f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
            raise ConfigError(f"{where}: '{self.name}' must be in {interval}, got {value:g}")
        return value


_TASK_ARITHMETIC_PARAMETERS = (
    ParameterSpec("int8_mask", bool, SHARED, False),
    ParameterSpec("rescale", bool, SHARED, False),
    ParameterSpec("lambda", float, SHARED, 1.0),
    ParameterSpec("weight", float, NON_BASE),
    ParameterSpec("density", float, NON_BASE, 1.0, low=0.0, high=1.0, low_open=True),
)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    parameters: tuple[ParameterSpec, ...]
    needs_base: bool = False
    exactly_two: bool = False

    def parameter(self, name: str) -> ParameterSpec:
        return next(p for p in self.parameters if p.name == name)


# The native methods, with mergekit 0.1.5's parameter names, scopes and defaults
# (mergekit/merge_methods/{linear,slerp}.py and registry.py).
NATIVE_METHODS = {
    "linear": MethodSpec("linear", (
        ParameterSpec("weight", float, INPUT),
        ParameterSpec("normalize", bool, SHARED, True),
    )),
    "slerp": MethodSpec("slerp", (ParameterSpec("t", float, SHARED, low=0.0, high=1.0),),
                        needs_base=True, exactly_two=True),
    "ties": MethodSpec("ties", (ParameterSpec("normalize", bool, SHARED, True),
                                *_TASK_ARITHMETIC_PARAMETERS), needs_base=True),
    "task_arithmetic": MethodSpec("task_arithmetic", (ParameterSpec("normalize", bool, SHARED, False),
                                                      *_TASK_ARITHMETIC_PARAMETERS), needs_base=True),
}
# Methods that run through mergekit's own code (mergekit 0.1.5's registry).
MERGEKIT_METHODS = (
    "arcee_fusion", "breadcrumbs", "breadcrumbs_ties", "dare_linear", "dare_ties", "della",
    "della_linear", "karcher", "model_stock", "multislerp", "nearswap", "nuslerp", "passthrough",
    "ram", "ramplus_tl", "sce",
)
KNOWN_METHODS = tuple(sorted((*NATIVE_METHODS, *MERGEKIT_METHODS)))
# tokenizer_source values that name no model: the base model's tokenizer, or the union of all
TOKENIZER_SOURCE_WORDS = ("base", "union")
TOP_LEVEL_KEYS = ("merge_method", "models", "base_model", "parameters", "dtype", "out_dtype",
                  "tokenizer_source", "tokenizer", "chat_template", "slices", "modules")
MODEL_KEYS = ("model", "parameters")
DTYPES = ("float32", "bfloat16", "float16", "float64")


@dataclass(frozen=True)
class ModelRef:
    """A checkpoint directory, optionally with a LoRA adapter to merge into it first."""

    path: Path
    lora: Path | None = None

    @classmethod
    def parse(cls, value: Any, where: str) -> "ModelRef":
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            raise ConfigError(f"{where}: expected a checkpoint path, got {value!r}")
        parts = str(value).split("+")
        if len(parts) > 2:
            raise ConfigError(f"{where}: '{value}' is neither PATH nor PATH+LORA_PATH")
        return cls(Path(parts[0]).expanduser(), Path(parts[1]).expanduser() if len(parts) == 2 else None)

    def __str__(self) -> str:
        return f"{self.path}+{self.lora}" if self.lora else str(self.path)


@dataclass
class ModelEntry:
    ref: ModelRef
    parameters: dict = field(default_factory=dict)


@dataclass
class MergeConfig:
    """A validated merge config. ``raw`` is the config as given (for mergekit and the card)."""

    method: str
    models: list[ModelEntry]
    base_model: ModelRef | None
    parameters: dict
    dtype: str | None
    out_dtype: str | None
    tokenizer_source: str | ModelRef | None
    raw: dict
    source: str = "config"
    # Models named only inside mergekit's 'slices' / 'modules' (passthrough and friends),
    # by where they appear, e.g. 'slices[0].sources[1]'.
    slice_sources: list[tuple[str, ModelRef]] = field(default_factory=list)

    @property
    def spec(self) -> MethodSpec | None:
        return NATIVE_METHODS.get(self.method)

    def inputs(self) -> list[ModelEntry]:
        """The merge inputs in mergekit's order: the models, then the base if not among them."""
        entries = list(self.models)
        if self.base_model is not None and all(e.ref != self.base_model for e in entries):
            entries.append(ModelEntry(self.base_model))
        return entries

    def referenced(self) -> list[tuple[str, ModelRef]]:
        """Every checkpoint the config names, by its role: models, base, slice sources,
        tokenizer source (a ref may appear under several roles)."""
        refs = [(f"models[{i}]", e.ref) for i, e in enumerate(self.models)]
        if self.base_model is not None:
            refs.append(("base_model", self.base_model))
        refs.extend(self.slice_sources)
        if isinstance(self.tokenizer_source, ModelRef):
            refs.append(("tokenizer_source", self.tokenizer_source))
        return refs

    def native_blockers(self) -> list[str]:
        """Why this config needs the mergekit backend (empty when the native engine can run it)."""
        reasons = []
        if self.method not in NATIVE_METHODS:
            reasons.append(f"merge_method '{self.method}' is not native")
        for key in ("slices", "modules", "tokenizer", "chat_template"):
            if self.raw.get(key) is not None:
                reasons.append(f"'{key}' is not supported natively")
        if self.tokenizer_source == "union":
            reasons.append("tokenizer_source 'union' needs vocabulary merging")
        return reasons


def load_config(config: dict | str | os.PathLike) -> MergeConfig:
    """Parse (from a path or an already parsed dict) and validate a mergekit YAML config.
    Relative model paths are taken relative to the current directory, as mergekit does."""
    if isinstance(config, dict):
        return validate_config(config, "config")
    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"{path}: config file does not exist")
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with merge_method and models at the top")
    return validate_config(data, str(path))


def validate_config(raw: dict, source: str) -> MergeConfig:
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(f"{source}: unknown key '{key}'{did_you_mean(str(key), TOP_LEVEL_KEYS)}")
    method = raw.get("merge_method")
    if not isinstance(method, str):
        raise ConfigError(f"{source}: 'merge_method' is required (one of {', '.join(KNOWN_METHODS)})")
    if method not in KNOWN_METHODS:
        raise ConfigError(f"{source}: unknown merge_method '{method}'{did_you_mean(method, KNOWN_METHODS)}; "
                          f"known: {', '.join(KNOWN_METHODS)}")
    base = ModelRef.parse(raw["base_model"], f"{source}: base_model") if raw.get("base_model") else None
    models = []
    if raw.get("models") is not None:
        if not isinstance(raw["models"], list) or not raw["models"]:
            raise ConfigError(f"{source}: 'models' must be a non-empty list of {{model, parameters}}")
        for i, item in enumerate(raw["models"]):
            where = f"{source}: models[{i}]"
            if not isinstance(item, dict) or "model" not in item:
                raise ConfigError(f"{where}: expected a mapping with a 'model' key")
            for key in item:
                if key not in MODEL_KEYS:
                    raise ConfigError(f"{where}: unknown key '{key}'{did_you_mean(str(key), MODEL_KEYS)}")
            models.append(ModelEntry(ModelRef.parse(item["model"], f"{where}.model"),
                                     _mapping(item.get("parameters"), f"{where}.parameters")))
    elif raw.get("slices") is None and raw.get("modules") is None:
        raise ConfigError(f"{source}: 'models' is required (or mergekit's 'slices'/'modules')")
    for key in ("dtype", "out_dtype"):
        if raw.get(key) is not None and raw[key] not in DTYPES:
            raise ConfigError(f"{source}: {key} '{raw[key]}' is not one of {', '.join(DTYPES)}")
    tokenizer_source = raw.get("tokenizer_source")
    if tokenizer_source is not None and tokenizer_source not in TOKENIZER_SOURCE_WORDS:
        tokenizer_source = ModelRef.parse(tokenizer_source, f"{source}: tokenizer_source")
    if tokenizer_source == "base" and base is None:
        raise ConfigError(f"{source}: tokenizer_source 'base' needs a base_model")
    config = MergeConfig(method, models, base, _mapping(raw.get("parameters"), f"{source}: parameters"),
                         raw.get("dtype"), raw.get("out_dtype"), tokenizer_source, raw, source,
                         _slice_sources(raw, source))
    if config.spec is not None and models:
        _validate_native(config)
    _check_paths_exist(config)
    return config


def _slice_sources(raw: dict, source: str) -> list[tuple[str, ModelRef]]:
    """The models that mergekit's 'slices' (and the 'slices'/'models' of 'modules') name, in
    the order written. Only the model paths are read here; mergekit validates the rest."""
    found = []

    def from_slices(slices: Any, where: str) -> None:
        for i, piece in enumerate(slices if isinstance(slices, list) else []):
            sources = piece.get("sources") if isinstance(piece, dict) else None
            for j, item in enumerate(sources if isinstance(sources, list) else []):
                if isinstance(item, dict) and "model" in item:
                    label = f"{where}[{i}].sources[{j}]"
                    found.append((label, ModelRef.parse(item["model"], f"{source}: {label}.model")))

    from_slices(raw.get("slices"), "slices")
    modules = raw.get("modules")
    for name, module in (modules.items() if isinstance(modules, dict) else []):
        if not isinstance(module, dict):
            continue
        from_slices(module.get("slices"), f"modules.{name}.slices")
        models = module.get("models")
        for i, item in enumerate(models if isinstance(models, list) else []):
            if isinstance(item, dict) and "model" in item:
                label = f"modules.{name}.models[{i}]"
                found.append((label, ModelRef.parse(item["model"], f"{source}: {label}.model")))
    return found


def _mapping(value: Any, where: str) -> dict:
    """A copy, so that normalizing settings leaves the raw config as the user wrote it."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of parameter names to values")
    return dict(value)


def _validate_native(config: MergeConfig) -> None:
    spec = config.spec
    names = [p.name for p in spec.parameters]
    scopes = [("parameters", config.parameters)] + [
        (f"models[{i}].parameters", m.parameters) for i, m in enumerate(config.models)]
    for where, settings in scopes:
        for key, setting in settings.items():
            if key not in names:
                raise ConfigError(f"{config.source}: {where}: unknown parameter '{key}' for {spec.name}"
                                  f"{did_you_mean(str(key), names)} (known: {', '.join(names)})")
            settings[key] = normalize_setting(setting, spec.parameter(key), f"{config.source}: {where}.{key}")
    inputs = config.inputs()
    if spec.needs_base and config.base_model is None:
        raise ConfigError(f"{config.source}: {spec.name} needs a base_model (the model the others are "
                          "compared against)")
    if spec.exactly_two and len(inputs) != 2:
        raise ConfigError(f"{config.source}: slerp merges exactly two models (the base_model and one other), "
                          f"got {len(inputs)}")


def normalize_setting(setting: Any, param: ParameterSpec, where: str) -> Any:
    """A setting checked and with every scalar converted (numbers to float): a scalar, a
    list of scalars (a layer gradient), or a list of {filter, value} entries."""
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return param.check(setting, where)
    if isinstance(setting, list) and setting:
        if all(isinstance(e, (bool, int, float, str)) for e in setting):
            return [param.check(e, where) for e in setting]
        entries = []
        for cond in setting:
            if not isinstance(cond, dict) or "value" not in cond or set(cond) - {"filter", "value"}:
                raise ConfigError(f"{where}: expected numbers (a layer gradient) or {{filter, value}} "
                                  f"entries, got {cond!r}")
            if isinstance(cond["value"], (dict, type(None))):
                raise ConfigError(f"{where}: a filter's value must be a number or a list of numbers")
            entries.append({"filter": cond.get("filter"), "value": normalize_setting(cond["value"], param, where)})
        return entries
    raise ConfigError(f"{where}: expected a number, a list of numbers or {{filter, value}} entries, "
                      f"got {setting!r}")


def evaluate_setting(setting: Any, tensor_name: str, t: float) -> Any:
    """mergekit.config.evaluate_setting for validated settings: None when no filter matches."""
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, (bool, int, float)):
        return setting
    if not setting:
        return None
    if all(isinstance(e, (bool, int, float)) for e in setting):
        if not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in setting):
            return setting[int(t * (len(setting) - 1))]
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * float(setting[i0]) + frac * float(setting[i1])
    for cond in setting:
        flt = cond.get("filter")
        if flt is None or flt == "*" or (tensor_name and flt in tensor_name):
            return evaluate_setting(cond["value"], tensor_name, t)
    return None


def resolve_parameter(param: ParameterSpec, scopes: list[dict], tensor_name: str, t: float) -> Any:
    """The first scope whose setting yields a value wins; then the default."""
    for settings in scopes:
        if param.name in settings:
            value = evaluate_setting(settings[param.name], tensor_name, t)
            if value is not None:
                return param.kind(value)
    if param.default is None:
        raise ConfigError(f"parameter '{param.name}' has no value for tensor '{tensor_name}' "
                          "(no filter matched and there is no default)")
    return param.default


def _check_paths_exist(config: MergeConfig) -> None:
    for _, ref in config.referenced():
        if not ref.path.is_dir():
            raise ConfigError(f"{config.source}: model path '{ref.path}' does not exist"
                              if not ref.path.exists() else
                              f"{config.source}: model path '{ref.path}' is not a directory")
        if ref.lora is not None and not (ref.lora / "adapter_config.json").is_file():
            raise ConfigError(f"{config.source}: LoRA adapter '{ref.lora}' does not exist "
                              "(expected a peft directory with adapter_config.json)")
