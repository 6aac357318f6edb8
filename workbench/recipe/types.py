"""Check and coerce recipe values against the type annotations of an engine's config.

YAML hands us ints, floats, strings, bools, lists and dicts, but not always the ones the
engine wants: PyYAML reads `5e-5` (no dot) as a string, and a user writes `layers: 0,3,6`.
Each value is converted where the conversion is lossless, otherwise the problem is
returned as a sentence naming the expected type.
"""

from __future__ import annotations

import types
import typing
from pathlib import PurePath


class TypeMismatch(ValueError):
    """A value that does not fit its annotation; the message says what was expected."""


def coerce(value, annotation):
    """``value`` converted to ``annotation`` (raises TypeMismatch)."""
    if annotation in (typing.Any, object) or annotation is None:
        return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg)
            except TypeMismatch as exc:
                problems.append(str(exc))
        raise TypeMismatch(" or ".join(dict.fromkeys(problems)))
    if origin is typing.Literal:
        if value in args:
            return value
        raise TypeMismatch(f"one of {', '.join(map(str, args))}")
    if origin in (list, tuple) or annotation in (list, tuple):
        item_type = args[0] if args else typing.Any
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise TypeMismatch(f"a list (got {_describe(value)})")
        items = [coerce(item, item_type) for item in value]
        return tuple(items) if (origin or annotation) is tuple else items
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise TypeMismatch(f"a mapping (got {_describe(value)})")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise TypeMismatch(f"true or false (got {_describe(value)})")
    if annotation in (int, float):
        return _number(value, annotation)
    if annotation is str:
        if isinstance(value, str):
            return value
        raise TypeMismatch(f"a string (got {_describe(value)})")
    if isinstance(annotation, type) and isinstance(value, annotation):
        return value
    if isinstance(annotation, type) and issubclass(annotation, PurePath) and isinstance(value, str):
        return annotation(value)
    if isinstance(annotation, type):
        raise TypeMismatch(f"a {annotation.__name__} (got {_describe(value)})")
    return value


def _number(value, kind: type):
    """An int or float; numeric strings ('5e-5', which YAML leaves a string) are parsed."""
    if isinstance(value, bool):
        pass
    elif isinstance(value, int) or (kind is float and isinstance(value, float)):
        return kind(value)
    elif isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
    raise TypeMismatch(f"{'an integer' if kind is int else 'a number'} (got {_describe(value)})")


def _describe(value) -> str:
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    return type(value).__name__
