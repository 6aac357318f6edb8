"""A recipe step with `fsdp: true` and `nproc: 2` is launched by the runner as two torchrun
processes (CPU, gloo): it trains the same weights as the CLI's torchrun run, is cached like
any step, and bad launch options are refused when the recipe loads, before anything is written."""

from __future__ import annotations

import pytest
import torch
import yaml

from tests.cli_helpers import run_workbench
from tests.test_fsdp import data, sft_settings, torchrun, weights  # noqa: F401 (data is a fixture)
from workbench.errors import ConfigError
from workbench.recipe import load_recipe
from workbench.recipe.runner import Runner
from workbench.recipe.state import read_record


def write_recipe(path, steps) -> str:
    path.write_text(yaml.safe_dump({"name": "dist", "steps": steps}, sort_keys=False))
    return str(path)


def sft_step(model, data, **launch) -> dict:
    settings = sft_settings(model, data, "unused")
    del settings["out"]
    return {"id": "ft", "sft": settings, **launch}


def test_an_fsdp_step_trains_like_the_cli_under_torchrun_and_is_cached(tiny_llama, data, tmp_path, monkeypatch):
    path = write_recipe(tmp_path / "dist.yaml", [sft_step(tiny_llama, data, fsdp=True, nproc=2)])
    runs = tmp_path / "runs"
    Runner(load_recipe(path), runs, log=lambda _: None).run()
    record = read_record(runs / "dist", "ft")
    assert record.status == "done" and {"fsdp", "nproc"} <= set(record.parts)
    torchrun("sft", sft_settings(tiny_llama, data, tmp_path / "cli", fsdp=True))
    got, expected = weights(runs / "dist" / "ft"), weights(tmp_path / "cli")
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-4, rtol=0, msg=name)
    assert (runs / "dist" / "ft" / "checkpoints").is_dir()

    def no_launch(processes, out):
        raise AssertionError("a cached step was launched again")

    monkeypatch.setattr("workbench.recipe.processes.run_processes", no_launch)
    decisions = Runner(load_recipe(path), runs, log=lambda _: None).run()
    assert [d.action for d in decisions] == ["cached"]
    changed = Runner(load_recipe(path, ["ft.nproc=3"]), runs).plan()
    assert (changed[0].action, changed[0].reason) == ("run", "changed: nproc")


def test_a_failing_launch_names_the_step_and_the_childs_error(tiny_llama, data, tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text("not json\n")  # exists (passes the recipe's checks); the engine refuses it
    path = write_recipe(tmp_path / "dist.yaml", [sft_step(tiny_llama, broken, nproc=2)])
    result = run_workbench("run", path, "--runs-dir", tmp_path / "runs")
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: step 'ft' (sft) failed: ") and "broken.jsonl" in last, last
    assert read_record(tmp_path / "runs" / "dist", "ft").status == "failed"


@pytest.mark.parametrize("launch, key, expected", [
    ({"fsdp": True}, "fsdp", "fsdp shards the model over several processes; add nproc: N (N >= 2)"),
    ({"fsdp": True, "nproc": 1}, "nproc", "expected at least 2 processes, got 1"),
    ({"nproc": "two"}, "nproc", "expected an integer (got 'two')"),
])
def test_bad_launch_options_are_one_line_exit_2_and_write_nothing(tiny_llama, data, tmp_path, launch, key, expected):
    path = write_recipe(tmp_path / "dist.yaml", [sft_step(tiny_llama, data, **launch)])
    result = run_workbench("run", path, "--runs-dir", tmp_path / "runs")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {path}:"), result.stderr
    assert f"step 'ft', key '{key}': {expected}" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_fsdp_is_a_launch_option_not_a_parameter_and_its_engine_rules_apply(tiny_llama, data, tmp_path):
    step = sft_step(tiny_llama, data)
    step["sft"]["fsdp"] = True
    with pytest.raises(ConfigError, match=r"step 'ft', key 'fsdp': 'fsdp' is a launch option: write it beside"):
        load_recipe(write_recipe(tmp_path / "a.yaml", [step]))
    distill = {"id": "d", "distill": {"student": str(tiny_llama), "teacher": str(tiny_llama), "data": str(data),
                                      "on_policy": 0.5}, "fsdp": True, "nproc": 2}
    with pytest.raises(ConfigError, match="on_policy sampling is not supported with fsdp"):
        load_recipe(write_recipe(tmp_path / "b.yaml", [distill]))
