"""Input names of a recipe's steps: a step id becomes a Ref to that step's output, a path
(relative to the recipe file) an absolute Path that must exist. Step kinds call these from
their ``resolve``; every problem is added, naming the step and key."""

from __future__ import annotations

from pathlib import Path

from workbench.errors import did_you_mean
from workbench.recipe.problems import Problems
from workbench.recipe.refs import Ref


class Inputs:
    def __init__(self, steps: list, base_dir: Path, problems: Problems):
        self.by_id = {s.id: s for s in steps}
        self.groups: dict[str, list[str]] = {}
        for step in steps:
            self.groups.setdefault(step.group, []).append(step.id)
        self.base_dir = base_dir
        self.problems = problems

    def checkpoint(self, step, value, key: str, many: bool):
        """A Ref, an existing Path, or (``many``: a matrix step's written id) a list of Refs to
        all its variants. A name that is neither is a problem (and comes back unchanged)."""
        problems = self.problems
        if not isinstance(value, str):
            problems.add(f"expected a step id or a checkpoint path, got {type(value).__name__}", step.id, key)
            return value
        if value in self.groups and self.groups[value] != [value]:
            if value == step.group:
                problems.add("a step cannot use its own output", step.id, key)
            elif many:
                return [Ref(v) for v in self.groups[value]]
            else:
                problems.add(f"'{value}' is a matrix of steps; name one of {', '.join(self.groups[value])}",
                             step.id, key)
            return value
        if value in self.by_id:
            if value == step.id:
                problems.add("a step cannot use its own output", step.id, key)
            return Ref(value)
        candidate = (self.base_dir / value).resolve()
        if candidate.exists():
            return candidate
        problems.add(f"'{value}' is neither a step id nor an existing path (relative to "
                     f"{self.base_dir}){did_you_mean(value, set(self.by_id) | set(self.groups))}", step.id, key)
        return value

    def data_files(self, step, value, key: str):
        """A data file (or a list of them) as absolute Paths; each must exist."""
        paths = []
        for item in value if isinstance(value, list) else [value]:
            candidate = self.path(item)
            if not candidate.is_file():
                self.problems.add(f"data file '{item}' does not exist (relative to {self.base_dir})", step.id, key)
            paths.append(candidate)
        return paths if isinstance(value, list) else paths[0]

    def path(self, value) -> Path:
        """A path written in the recipe, relative to the recipe file, made absolute."""
        return (self.base_dir / str(value)).resolve()

    def published(self, step_id: str, name: str) -> str | None:
        """Where inside step ``step_id``'s output its ``name`` is (None: it writes none)."""
        step = self.by_id[step_id]
        return step.spec.published(step.params).get(name)

    def publishers(self, name: str) -> str:
        """Which steps write ``name``, said for an error message."""
        from workbench.recipe.kinds import KINDS

        return " or ".join(f"a {kind.name} step {kind.publishes[name]}" for kind in KINDS.values()
                           if name in kind.publishes) or "no step kind"
