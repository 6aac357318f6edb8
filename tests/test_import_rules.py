"""The import rules of docs/architecture.md, checked on the source (ast, nothing imported):
Core imports only Core; an engine imports Core and itself, never another engine; the recipe
layer uses engines only through their packages' public names; nothing below the commands
imports a command."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"

CORE = {"workbench", "atomic", "checkpoint", "console", "constants", "data", "direct_file", "errors", "heavy_imports",
        "markdown", "modeling", "safetensors_io", "training", "yaml_io"}
ENGINES = {"distill", "evaluate", "merge", "model_import", "sft"}
RECIPE = {"recipe"}
# Above the engines, beside the recipe layer: a merge search (merges and evaluates), the server
# (checkpoints and the outputs of recipe runs, read through recipe.state).
COMPOSERS = {"merge_search", "serve"}
COMMANDS = {"__main__", "cli", "commands"}


def part_of(module: str) -> str:
    """The part a dotted module name belongs to: its first name under ``workbench``."""
    names = module.split(".")
    return names[1] if len(names) > 1 else "workbench"


def imported_modules(path: Path) -> set[str]:
    """Every ``workbench...`` module the file imports (``from workbench import x`` counts as
    ``workbench.x`` when x is a module or package of the workbench)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "workbench")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "workbench":
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                as_path = PACKAGE.parent / child.replace(".", "/")
                found.add(child if as_path.is_dir() or as_path.with_suffix(".py").is_file() else node.module)
    return found


def imports_by_part() -> dict[str, list[tuple[str, str]]]:
    """part -> [(file relative to the package, imported module)]."""
    edges: dict[str, list[tuple[str, str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        part = relative.parts[0].removesuffix(".py") if len(relative.parts) > 1 or relative.stem != "__init__" \
            else "workbench"
        for module in imported_modules(path):
            edges.setdefault(part, []).append((str(relative), module))
    return edges


def test_every_part_of_the_package_has_a_place_in_the_rules():
    parts = {p.name.removesuffix(".py") for p in PACKAGE.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").is_file()))}
    parts.discard("__init__")
    assert parts - (CORE | ENGINES | RECIPE | COMPOSERS | COMMANDS) == set(), "classify the new part in this test and the docs"


def test_core_imports_only_core():
    bad = [(f, m) for part, edges in imports_by_part().items() if part in CORE for f, m in edges
           if part_of(m) not in CORE]
    assert bad == []


def test_no_engine_imports_another_engine_the_recipe_layer_or_a_command():
    bad = [(f, m) for part, edges in imports_by_part().items() if part in ENGINES for f, m in edges
           if part_of(m) not in CORE | {part}]
    assert bad == []


def test_the_recipe_layer_uses_engines_only_through_their_public_names():
    bad = [(f, m) for f, m in imports_by_part()["recipe"]
           if part_of(m) in ENGINES and m != f"workbench.{part_of(m)}" or part_of(m) in COMMANDS]
    assert bad == []


def test_the_composers_use_engines_only_through_their_public_names():
    bad = [(f, m) for part in COMPOSERS for f, m in imports_by_part()[part]
           if part_of(m) in COMMANDS or part_of(m) in ENGINES and m != f"workbench.{part_of(m)}"]
    assert bad == []


def test_the_generic_recipe_modules_import_no_engine():
    """Only a step kind (recipe/kinds/) knows its engine."""
    bad = [(f, m) for f, m in imports_by_part()["recipe"]
           if part_of(m) in ENGINES and not f.startswith("recipe/kinds/")]
    assert bad == []


def test_the_checks_see_imports_inside_functions():
    """Engines are imported lazily inside methods; the checks must still see them."""
    assert ("recipe/kinds/merge.py", "workbench.merge") in imports_by_part()["recipe"]
    assert ("distill/engine.py", "workbench.modeling") in imports_by_part()["distill"]


def test_scripts_import_nothing_from_tests():
    """Benchmarks and tools build what they need from the package, not from the test suite."""
    bad = []
    for path in sorted((PACKAGE.parent / "scripts").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [(path.name, name) for name in names if name.split(".")[0] == "tests"]
    assert bad == []


def test_only_the_console_and_the_process_group_read_the_rank():
    """Who prints under torchrun is decided in one place (workbench.console.log)."""
    readers = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if '"RANK"' in p.read_text())
    assert readers == ["console.py", "training/distributed.py"]
