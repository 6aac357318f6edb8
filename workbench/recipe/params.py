"""Typed parameters: recipe values checked and converted by pydantic against the type
annotations a step kind declares (for most kinds: the fields of the engine's config).

YAML hands us ints, floats, strings, bools, lists and dicts, but not always the ones the
engine wants: PyYAML reads `5e-5` (no dot) as a string, and a user writes `layers: 0,3,6`.
pydantic's lax mode converts numeric strings; we add the comma-separated lists and keep
booleans out of numbers (YAML's `yes` is a bool, never the count 1). A value that does not
fit is returned as a sentence naming the expected type.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, StrictBool, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

EXPECTED = {  # pydantic error type -> what the value should have been
    "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
    "float_parsing": "a number", "float_type": "a number",
    "bool_type": "true or false", "string_type": "a string",
    "list_type": "a list", "tuple_type": "a list", "dict_type": "a mapping",
}


class TypeMismatch(ValueError):
    """A value that does not fit its annotation; the message says what was expected."""


def coerce(value, annotation):
    """``value`` converted to ``annotation`` (raises TypeMismatch)."""
    try:
        return _adapter(annotation).validate_python(value)
    except ValidationError as exc:
        raise TypeMismatch(" or ".join(dict.fromkeys(_expected(error) for error in exc.errors()))) from None


@functools.lru_cache(maxsize=None)
def _adapter(annotation) -> TypeAdapter:
    # arbitrary types (an engine's Checkpoint, os.PathLike) are checked with isinstance
    return TypeAdapter(_recipe_type(annotation), config=ConfigDict(arbitrary_types_allowed=True))


def _recipe_type(annotation):
    """``annotation`` with the recipe's conversions: lists from comma-separated strings,
    numbers from numeric strings but not from booleans, booleans only from booleans."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is bool:
        return StrictBool
    if annotation in (int, float):
        return Annotated[annotation, BeforeValidator(functools.partial(_no_bool, annotation))]
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_recipe_type(arg) for arg in args)]
    if origin in (list, tuple) or annotation in (list, tuple):
        item = _recipe_type(args[0]) if args else Any
        container = tuple[item, ...] if (origin or annotation) is tuple else list[item]
        return Annotated[container, BeforeValidator(_split_commas)]
    return annotation


def _no_bool(kind: type, value):
    if isinstance(value, bool) or (kind is int and isinstance(value, float)):
        raise PydanticCustomError("int_type" if kind is int else "float_type", "not a number")
    return value


def _split_commas(value):
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _expected(error: dict) -> str:
    if error["type"] == "literal_error":
        return f"one of {error['ctx']['expected']}"
    expected = EXPECTED.get(error["type"])
    if expected is None:
        return error["msg"]
    return f"{expected} (got {_describe(error['input'])})"


def _describe(value) -> str:
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    return type(value).__name__
