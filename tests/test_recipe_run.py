"""The tiny chain end to end: runs, is cached on the second run, re-runs only what a change
touches, resumes what was interrupted, and stops on a failing step with finished steps kept."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tests.cli_helpers import REPO_ROOT
from workbench.checkpoint import Checkpoint
from workbench.cli import main
from workbench.errors import WorkbenchError
from workbench.recipe import load_recipe
from workbench.recipe.report import write_report
from workbench.recipe.runner import Runner
from workbench.recipe.state import read_record, write_record

TINY_CHAIN = REPO_ROOT / "recipes" / "tiny-chain.yaml"


def plan(recipe_path, runs, overrides=()):
    return {d.step.id: (d.action, d.reason) for d in Runner(load_recipe(recipe_path, list(overrides)), runs).plan()}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """tiny-chain run once through the CLI; (runs dir, printed stdout)."""
    runs = tmp_path_factory.mktemp("runs")
    capture = tmp_path_factory.mktemp("out") / "stdout.txt"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        main(["run", str(TINY_CHAIN), "--runs-dir", str(runs)])
    capture.write_text(buffer.getvalue())
    return runs, buffer.getvalue()


def test_chain_runs_every_step_and_writes_the_report(chain):
    runs, stdout = chain
    run_dir = runs / "tiny-chain"
    recipe = load_recipe(TINY_CHAIN)
    for step_id in recipe.steps:
        assert read_record(run_dir, step_id).status == "done", step_id
    evaluation = json.loads((run_dir / "eval" / "eval.json").read_text())
    labels = [m["label"] for m in evaluation["models"]]
    assert labels[0] == "base" and evaluation["models"][0]["baseline"]  # the base is always the baseline
    assert set(labels) == {"base", "expert-upper", "expert-count", "soup", "ties", "student", "distilled"}
    assert "| base (baseline) | upper-test |" in stdout  # the table is printed
    report = (run_dir / "report.md").read_text()
    for section in ("## Steps", "## Evaluation: eval", "## Loss curves", "## Lineage"):
        assert section in report
    assert "| soup | merge | expert-upper, expert-count |" not in report  # inputs are keyed by parameter
    assert "models: expert-upper, expert-count" in report
    for trained in ("expert-upper", "expert-count", "distilled"):
        assert (run_dir / "plots" / f"{trained}-loss.png").stat().st_size > 1000
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "src='plots/" not in html  # self-contained


def test_second_run_is_all_cached(chain):
    runs, _ = chain
    decisions = plan(TINY_CHAIN, runs)
    assert {action for action, _ in decisions.values()} == {"cached"}, decisions


def test_changing_one_parameter_reruns_only_that_step_and_its_dependents(chain):
    runs, _ = chain
    decisions = plan(TINY_CHAIN, runs, ["expert-count.lr=1e-3"])
    rerun = {s for s, (action, _) in decisions.items() if action == "run"}
    assert rerun == {"expert-count", "soup", "ties", "student", "distilled", "eval"}
    assert decisions["expert-count"][1] == "changed: lr"
    assert decisions["base"][0] == decisions["expert-upper"][0] == "cached"

    run_dir = runs / "tiny-chain"
    before = {s: read_record(run_dir, s).started for s in decisions}
    main(["run", str(TINY_CHAIN), "--runs-dir", str(runs), "--set", "distilled.seed=1"])
    after = {s: read_record(run_dir, s).started for s in decisions}
    assert {s for s in decisions if after[s] != before[s]} == {"distilled", "eval"}
    assert plan(TINY_CHAIN, runs, ["distilled.seed=1"])["distilled"][0] == "cached"
    assert plan(TINY_CHAIN, runs)["distilled"] == ("run", "changed: seed")


def test_interrupted_or_modified_steps_are_rerun(chain):
    runs, _ = chain
    run_dir = runs / "tiny-chain"
    record = read_record(run_dir, "expert-upper")
    record.status = "running"  # what a killed run leaves behind
    write_record(run_dir, record)
    runner = Runner(load_recipe(TINY_CHAIN), runs)
    decision = next(d for d in runner.plan() if d.step.id == "expert-upper")
    assert (decision.action, decision.resume) == ("run", True)
    assert decision.reason == "interrupted: resumes from its last checkpoint"
    record.status = "done"
    write_record(run_dir, record)

    weights = run_dir / "ties" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert plan(TINY_CHAIN, runs)["ties"] == ("run", "its output is missing or was modified")


def test_selection_options_and_failed_step(tmp_path):
    shutil.copytree(REPO_ROOT / "recipes" / "tiny", tmp_path / "tiny")
    recipe = {"name": "broken", "steps": [
        {"id": "base", "import": {"tiny": {"layers": 2, "hidden": 32}}},
        {"id": "bad", "sft": {"model": "base", "data": "tiny/upper-train.jsonl", "lora_rank": 4,
                              "lora_targets": "no_such_module", "max_length": 32}}]}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(recipe))
    runs = tmp_path / "runs"
    assert plan(path, runs, ) == {"base": ("run", "never run"), "bad": ("run", "input 'base' runs first")}
    with pytest.raises(WorkbenchError, match=r"^step 'bad' \(sft\) failed: .*no_such_module"):
        Runner(load_recipe(path), runs, log=lambda _: None).run()
    assert read_record(runs / "broken", "base").status == "done"
    report = write_report(load_recipe(path), runs / "broken").read_text()
    assert "| bad | sft | failed: " in report and "no_such_module" in report
    assert plan(path, runs) == {"base": ("cached", "finished output with the same fingerprint"),
                                "bad": ("run", "its last run failed")}
    from workbench.recipe.runner import Selection

    forced = Runner(load_recipe(path), runs, Selection(force=("base",))).plan()
    assert [(d.action, d.reason) for d in forced][0] == ("run", "forced (--force/--from)")
    only = Runner(load_recipe(path), runs, Selection(only=("base",))).plan()
    assert [d.action for d in only] == ["cached", "skip"]
    with pytest.raises(WorkbenchError, match="step 'bad': input 'base' has no finished output"):
        Runner(load_recipe(path), tmp_path / "empty-runs", Selection(only=("bad",)), log=lambda _: None).run()


def test_merge_input_of_step_ids_joined_by_plus_merges_that_steps_adapter(tmp_path):
    """`base+lora`: the base step's checkpoint with the adapter the lora step wrote, which is
    what that step's own (merged) output holds too."""
    data = REPO_ROOT / "recipes" / "tiny" / "upper-train.jsonl"
    recipe = {"name": "plus", "steps": [
        {"id": "base", "import": {"tiny": {"layers": 2, "hidden": 32}}},
        {"id": "lora", "sft": {"model": "base", "data": str(data), "lora_rank": 4, "lr": 1e-2, "epochs": 1,
                               "batch_size": 16, "max_length": 32, "val_split": 0.0}},
        {"id": "again", "merge": {"merge_method": "linear", "dtype": "float32",
                                  "models": [{"model": "base+lora", "parameters": {"weight": 1.0}}]}}]}
    path = tmp_path / "plus.yaml"
    path.write_text(yaml.safe_dump(recipe))
    runs = tmp_path / "runs"
    Runner(load_recipe(path), runs, log=lambda _: None).run()
    assert read_record(runs / "plus", "again").inputs == {"models": ["base", "lora"]}
    merged, trained, base = (Checkpoint(runs / "plus" / s) for s in ("again", "lora", "base"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(trained.read(name), base.read(name))  # the adapter changed it
    for name in trained.names():
        torch.testing.assert_close(merged.read(name), trained.read(name))
    assert {d.action for d in Runner(load_recipe(path), runs).plan()} == {"cached"}
