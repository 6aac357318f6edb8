"""How a validated step names its inputs: another step's output (Ref), a checkpoint with a
LoRA adapter to merge into it (WithAdapter), or an absolute Path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Ref:
    """A parameter value naming another step's output checkpoint, or ``path`` inside it."""

    step: str
    path: str = ""


@dataclass(frozen=True)
class WithAdapter:
    """An input written MODEL+LORA (mergekit's syntax): a checkpoint and a LoRA adapter
    directory, each a Ref or a Path; the engine merges the adapter into it first."""

    model: Ref | Path
    adapter: Ref | Path


def iter_refs(value):
    """Every Ref inside a parameter value, in order."""
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


def replace_inputs(value, replace):
    """``value`` with every Ref, WithAdapter and Path replaced by ``replace(it)``, recursively
    through dicts, lists and tuples (which come back as lists)."""
    if isinstance(value, (Ref, WithAdapter, Path)):
        return replace(value)
    if isinstance(value, dict):
        return {k: replace_inputs(v, replace) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [replace_inputs(v, replace) for v in value]
    return value
