"""The one YAML reader: safe (no Python objects), and every problem names line and column.

``read_yaml(path)`` and ``parse_yaml(text, source)`` return the plain data (dicts, lists,
scalars). With ``lines=True`` they also return a ``Lines`` that says on which line each
mapping key or list item was written, so a later check (the recipe's schema) can name the
line of the value it refuses, not only the syntax errors the parser finds.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from workbench.errors import ConfigError


class Lines:
    """Line numbers (1-based) of the keys and items of a parsed document, by their path:
    ``lines.of("steps", 0, "sft", "lr")`` is where ``lr`` of the first step's ``sft`` is."""

    def __init__(self, root: yaml.Node | None):
        self.by_path: dict[tuple, int] = {}
        if root is not None:
            self._walk(root, ())

    def _walk(self, node: yaml.Node, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    self.by_path[(*path, key_node.value)] = key_node.start_mark.line + 1
                    self._walk(value_node, (*path, key_node.value))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.by_path[(*path, index)] = item.start_mark.line + 1
                self._walk(item, (*path, index))

    def of(self, *path) -> int | None:
        return self.by_path.get(tuple(path))


def parse_yaml(text: str, source: str, *, lines: bool = False):
    """The document in ``text`` (``source`` names it in errors); with ``lines``, (data, Lines)."""
    try:
        data = yaml.safe_load(text)
        located = Lines(yaml.compose(text, Loader=yaml.SafeLoader)) if lines else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{source}: YAML does not parse{where}: {problem}") from None
    return (data, located) if lines else data


def read_yaml(path: str | Path, *, lines: bool = False):
    """The YAML file at ``path``; a missing or unreadable file is a ConfigError too."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    return parse_yaml(text, str(path), lines=lines)
