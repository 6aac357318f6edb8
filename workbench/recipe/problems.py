"""Every problem of a recipe, collected so the user sees all of them at once, each naming
where it was written: the file's line, the step, the key (or the --set that gave it)."""

from __future__ import annotations

from pathlib import Path

from workbench.errors import ConfigError


class Problems:
    def __init__(self, path: Path):
        self.path = path
        self.items: list[str] = []
        self.origins: dict[tuple[str, str | None], int | str] = {}  # (step, key) -> line or "--set ..."
        self.steps: set[str] = set()  # the steps problems were found in

    def note_origin(self, step: str, key: str | None, origin: int | str | None) -> None:
        """Where (step, key) was written: a line of the file, or the --set option that set it."""
        if origin is not None:
            self.origins[(step, key)] = origin

    def alias(self, step: str, written: str) -> None:
        """A matrix variant was written where its matrix step was."""
        for (owner, key), origin in list(self.origins.items()):
            if owner == written:
                self.origins.setdefault((step, key), origin)

    def add(self, message: str, step: str | None = None, key: str | None = None) -> None:
        where = (f"step '{step}'" if step else "") + (f", key '{key}'" if key else "")
        origin = self._origin(step, key)
        if isinstance(origin, str):
            where += f" ({origin})"
        item = f"{where}: {message}" if where else message
        if isinstance(origin, int):
            item = f"line {origin}: {item}"
        if item not in self.items:  # matrix variants share their written step's problems
            self.items.append(item)
        if step:
            self.steps.add(step)

    def about(self, *steps: str) -> bool:
        """Whether a problem was found in any of ``steps``."""
        return any(step in self.steps for step in steps)

    def _origin(self, step: str | None, key: str | None) -> int | str | None:
        if step is None:
            return None
        root = key.split(".")[0].split("[")[0] if key else None
        return self.origins.get((step, root), self.origins.get((step, None)))

    def raise_if_any(self) -> None:
        if len(self.items) == 1:
            item = self.items[0]
            if item.startswith("line "):
                line, _, rest = item.partition(": ")
                raise ConfigError(f"{self.path}:{line.removeprefix('line ')}: {rest}")
            raise ConfigError(f"{self.path}: {item}")
        if self.items:
            lines = "\n  ".join(self.items)
            raise ConfigError(f"{self.path}: {len(self.items)} problems:\n  {lines}")
