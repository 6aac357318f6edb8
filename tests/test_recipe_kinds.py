"""A step kind is one class and one registry entry: the schema, runner, fingerprint and report
handle a kind they have never heard of, and name none themselves."""

import re

import pytest
import yaml

from tests.cli_helpers import REPO_ROOT
from workbench.checkpoint import file_fingerprint
from workbench.errors import ConfigError
from workbench.recipe import load_recipe
from workbench.recipe.kinds import KINDS, StepKind
from workbench.recipe.refs import Ref
from workbench.recipe.report import write_report
from workbench.recipe.runner import Runner
from workbench.recipe.state import read_record


class Note(StepKind):
    """Writes its text `repeat` times to note.txt; may name an earlier step it comes after."""

    name = "note"
    checkpoint_keys = ("after",)
    required = ("text",)
    launch_options = {"nproc": int}

    def __init__(self):
        self.calls = []

    def parameters(self):
        return {"text": str, "after": str, "repeat": int}

    def validate(self, step, stand_in):
        if step.params.get("repeat", 1) < 1:
            raise ConfigError(f"repeat must be at least 1, got {step.params['repeat']}")

    def run(self, call):
        self.calls.append(call)
        call.out.mkdir(parents=True, exist_ok=True)
        (call.out / "note.txt").write_text(call.params["text"] * call.params.get("repeat", 1))
        return call.out

    def output_fingerprint(self, output):
        return file_fingerprint(output / "note.txt")

    def metrics(self, output):
        return {"length": len((output / "note.txt").read_text())}

    def report_blocks(self, step_id, output):
        return [("h2", f"Note: {step_id}"), ("text", (output / "note.txt").read_text())]


@pytest.fixture
def note_kind(monkeypatch):
    kind = Note()
    monkeypatch.setitem(KINDS, kind.name, kind)
    return kind


def write(tmp_path, steps):
    path = tmp_path / "notes.yaml"
    path.write_text(yaml.safe_dump({"name": "notes", "steps": steps}, sort_keys=False))
    return path


def test_a_new_kind_is_validated_run_cached_and_reported_by_the_generic_code(tmp_path, note_kind):
    path = write(tmp_path, [{"id": "first", "note": {"text": "a"}},
                            {"id": "second", "note": {"text": "b", "after": "first", "repeat": "3"}, "nproc": 2}])
    recipe = load_recipe(path)
    assert recipe.steps["second"].params == {"text": "b", "after": Ref("first"), "repeat": 3}
    assert recipe.steps["second"].launch == {"nproc": 2}
    runs = tmp_path / "runs"
    Runner(recipe, runs, log=lambda _: None).run()
    first, second = note_kind.calls
    assert second.params["after"] == str(runs / "notes" / "first")  # the input's output, as a path
    assert second.given["after"] == Ref("first")
    assert (first.launch, second.launch) == ({}, {"nproc": 2})
    assert read_record(runs / "notes", "second").metrics == {"length": 3}
    report = write_report(recipe, runs / "notes").read_text()
    assert "## Note: second" in report and "bbb" in report
    assert {d.action for d in Runner(load_recipe(path), runs).plan()} == {"cached"}
    decisions = {d.step.id: d for d in Runner(load_recipe(path, ["second.nproc=4"]), runs).plan()}
    assert (decisions["second"].action, decisions["second"].reason) == ("run", "changed: nproc")
    assert decisions["first"].action == "cached"


def test_launch_options_and_engine_rules_of_a_kind_are_checked_before_anything_runs(tmp_path, note_kind):
    path = write(tmp_path, [{"id": "base", "import": {"tiny": {}}, "nproc": 2},
                            {"id": "x", "note": {"text": "a"}, "nproc": "two"},
                            {"id": "y", "note": {"text": "a", "repeat": 0}}])
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    message = str(caught.value)
    assert "3 problems" in message
    assert "step 'base', key 'nproc': import steps take no launch option 'nproc' (only " in message
    assert "step 'x', key 'nproc': expected an integer (got 'two')" in message
    assert "step 'y', key 'repeat': repeat must be at least 1, got 0" in message


def test_generic_recipe_code_names_no_step_kind():
    """Only a kind's own module under recipe/kinds/ (and the registry) may name it."""
    recipe_dir = REPO_ROOT / "workbench" / "recipe"
    generic = [*recipe_dir.glob("*.py"), REPO_ROOT / "workbench" / "commands" / "recipe.py"]
    for path in generic:
        text = path.read_text()
        for name in KINDS:
            assert not re.search(rf"""["']{name}["']""", text), (path.name, name)
