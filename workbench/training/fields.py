"""Composed config dataclasses seen flat: one option per leaf field, named by the field.

An engine's config holds its own fields plus parts (``part(DataConfig)``), each a dataclass
of options defined once. Users never see the nesting: CLI options, YAML config files, recipe
keys and run identities use the leaf names (``lr``, not ``train.lr``), so leaf names are
unique across a config's parts (``flat_fields`` refuses a clash).

``option(default, help)`` keeps a field's help text beside it; ``part(cls, **defaults)``
composes a part, with defaults of its own for this engine (distillation's ``lr``). Configs
are declared with ``slots=True``, so setting an option on the wrong level
(``config.lr = ...`` for ``config.train.lr``) is an AttributeError, not a silent new attribute.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field

from workbench.errors import ConfigError, did_you_mean

HELP = "help"
PART = "part"


def option(default, help: str):
    """A config field with its help text (shown by ``--help``)."""
    return field(default=default, metadata={HELP: help})


def part(cls, **defaults):
    """A composed part: its fields are options of the config that holds it."""
    return field(default_factory=functools.partial(cls, **defaults), metadata={PART: cls})


@dataclass(frozen=True)
class FlatField:
    """One option of a composed config: its flat name, where it lives, its type, default and help."""

    name: str
    path: tuple[str, ...]  # attribute names from the config down to the field
    type: object
    default: object
    help: str


@functools.lru_cache(maxsize=None)
def flat_fields(cls) -> tuple[FlatField, ...]:
    """Every option of ``cls``, parts expanded in place, in declaration order."""
    hints = typing.get_type_hints(cls)
    found: list[FlatField] = []
    for item in dataclasses.fields(cls):
        if PART in item.metadata:
            defaults = item.default_factory()
            for inner in flat_fields(item.metadata[PART]):
                default = _get(defaults, inner.path)
                found.append(dataclasses.replace(inner, path=(item.name, *inner.path), default=default))
        else:
            found.append(FlatField(item.name, (item.name,), hints[item.name], item.default,
                                   item.metadata.get(HELP, "")))
    names = [flat.name for flat in found]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise TypeError(f"{cls.__name__}: options defined more than once: {', '.join(clashes)}")
    return tuple(found)


def flat_names(cls) -> list[str]:
    return [flat.name for flat in flat_fields(cls)]


def config_from_dict(cls, values: dict, source: str = "config"):
    """Build a composed config from flat ``{option: value}``, refusing unknown keys with a suggestion."""
    names = flat_names(cls)
    for key in values:
        if key not in names:
            raise ConfigError(f"{source}: unknown key '{key}'{did_you_mean(key, names)}")
    return _build(cls, values)


def _build(cls, values: dict):
    kwargs = {}
    for item in dataclasses.fields(cls):
        if PART in item.metadata:
            inner = {key: values[key] for key in flat_names(item.metadata[PART]) if key in values}
            kwargs[item.name] = dataclasses.replace(item.default_factory(), **inner)
        elif item.name in values:
            kwargs[item.name] = values[item.name]
    return cls(**kwargs)


def flat_values(config) -> dict:
    """``{option: value}`` of a composed config, in ``flat_fields`` order."""
    return {flat.name: _get(config, flat.path) for flat in flat_fields(type(config))}


def _get(config, path: tuple[str, ...]):
    for name in path:
        config = getattr(config, name)
    return config
