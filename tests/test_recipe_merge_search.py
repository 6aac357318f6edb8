"""The merge_search step kind: step ids as merge inputs, objective data relative to the recipe,
its output usable by later steps, cached like any step, and bad searches refused before any
step runs."""

import shutil

import pytest
import yaml

from tests.cli_helpers import REPO_ROOT
from workbench.checkpoint import Checkpoint
from workbench.errors import WorkbenchError
from workbench.recipe import load_recipe
from workbench.recipe.report import write_report
from workbench.recipe.runner import Runner

DATA = REPO_ROOT / "recipes" / "tiny" / "upper-test.jsonl"


def recipe(trials=3, **range_):
    return {"name": "searching", "steps": [
        {"id": "base", "import": {"tiny": {"layers": 2, "hidden": 32, "seed": 0}}},
        {"id": "a", "import": {"tiny": {"layers": 2, "hidden": 32, "seed": 1}}},
        {"id": "b", "import": {"tiny": {"layers": 2, "hidden": 32, "seed": 2}}},
        {"id": "search", "merge_search": {
            "merge_method": "ties", "base_model": "base",
            "models": [{"model": "a", "parameters": {"weight": 1.0, "density": 0.5}},
                       {"model": "b", "parameters": {"weight": 1.0, "density": 0.5}}],
            "search": {"parameters": {"models[0].parameters.density": range_ or {"low": 0.2, "high": 1.0},
                                      "parameters.lambda": {"low": 0.5, "high": 1.5, "layers": 2}},
                       "objective": [{"data": "data/valid.jsonl"}],
                       "trials": trials, "sampler": "random", "seed": 0, "max_length": 64}}},
        {"id": "eval", "eval": {"models": ["search"], "data": ["data/valid.jsonl"], "max_new_tokens": 4}},
    ]}


def write(tmp_path, content):
    (tmp_path / "data").mkdir(exist_ok=True)
    shutil.copyfile(DATA, tmp_path / "data" / "valid.jsonl")
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


def test_search_step_runs_feeds_later_steps_and_is_cached(tmp_path):
    path, runs = write(tmp_path, recipe()), tmp_path / "runs"
    Runner(load_recipe(path), runs, log=lambda _: None).run()
    run_dir = runs / "searching"
    searched = Checkpoint(run_dir / "search")
    lineage = searched.lineage["parameters"]["search"]
    assert lineage["trials"] == 3 and set(lineage["parameters"]) == {
        "models[0].parameters.density", "parameters.lambda[0]", "parameters.lambda[1]"}
    assert searched.lineage["inputs"]["objective[0].data"]["path"] == str(tmp_path / "data" / "valid.jsonl")
    assert len(list((run_dir / "search.trials").glob("*.json"))) == 3
    assert (run_dir / "eval" / "eval.json").is_file()
    report = write_report(load_recipe(path), run_dir).read_text()
    assert "## Merge search: search" in report and "Best of 3 trials" in report
    assert {d.action for d in Runner(load_recipe(path), runs).plan()} == {"cached"}
    path = write(tmp_path, recipe(trials=5))
    decisions = {d.step.id: d.action for d in Runner(load_recipe(path), runs).plan()}
    assert decisions == {"base": "cached", "a": "cached", "b": "cached", "search": "run", "eval": "run"}
    Runner(load_recipe(path), runs, log=lambda _: None).run()
    assert Checkpoint(run_dir / "search").lineage["parameters"]["search"]["trials"] == 5
    assert len(list((run_dir / "search.trials").glob("*.json"))) == 5  # the first 3 were replayed


@pytest.mark.parametrize("change,words", [
    ({"low": 0.2, "high": 1.5}, ["search", "'density' must be in (0, 1]"]),
    ({"low": 0.9, "high": 0.2}, ["low (0.9) is greater than high (0.2)"]),
])
def test_bad_search_is_refused_before_any_step_runs(tmp_path, change, words):
    path, runs = write(tmp_path, recipe(**change)), tmp_path / "runs"
    with pytest.raises(WorkbenchError) as raised:
        Runner(load_recipe(path), runs, log=lambda _: None).run()
    for word in words:
        assert word in str(raised.value)
    assert not (runs / "searching" / "base").exists()


def test_missing_objective_data_is_named_with_the_step_and_key(tmp_path):
    content = recipe()
    content["steps"][3]["merge_search"]["search"]["objective"] = [{"data": "data/missing.jsonl"}]
    with pytest.raises(WorkbenchError) as raised:
        load_recipe(write(tmp_path, content))
    message = str(raised.value)
    assert "search" in message and "search.objective[0].data" in message and "missing.jsonl" in message
