"""A recipe step with `fsdp: true` and `nproc: 2` is launched by the runner as two torchrun
processes (CPU, gloo): it trains the same weights as the CLI's torchrun run, is cached like
any step, and bad launch options are refused when the recipe loads, before anything is written.
A failed launch reports the error its ranks recorded in torchrun's reply files."""

from __future__ import annotations

import pytest
import torch
import yaml

from tests.cli_helpers import run_workbench
from tests.test_fsdp import data, sft_settings, torchrun, weights  # noqa: F401 (data is a fixture)
from workbench.console import record_error, recorded_errors
from workbench.errors import ConfigError
from workbench.recipe import load_recipe
from workbench.recipe.processes import launch_error
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
    """The error comes from the reply file each failing rank writes before it exits, not from the
    output: torchrun stops the other ranks as soon as one exits, possibly before they print (and
    a ConfigError is printed by rank 0 only)."""
    broken = tmp_path / "broken.jsonl"
    broken.write_text("not json\n")  # exists (passes the recipe's checks); the engine refuses it
    path = write_recipe(tmp_path / "dist.yaml", [sft_step(tiny_llama, broken, nproc=2)])
    result = run_workbench("run", path, "--runs-dir", tmp_path / "runs")
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: step 'ft' (sft) failed: ") and "broken.jsonl" in last, last
    assert "rank" not in last  # every rank said the same: said once, as rank 0 would
    assert read_record(tmp_path / "runs" / "dist", "ft").status == "failed"


def test_the_error_reaches_torchruns_reply_files_whichever_rank_exits_first(tiny_llama, tmp_path):
    """torchrun stops the other rank as soon as one exits: the one that exited has recorded."""
    broken = tmp_path / "broken.jsonl"
    broken.write_text("not json\n")
    process = torchrun("sft", sft_settings(tiny_llama, broken, tmp_path / "out"), "--standalone",
                       "--nproc_per_node=2", f"--log-dir={tmp_path / 'logs'}", wait=False)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode != 0
    errors = recorded_errors(tmp_path / "logs")
    assert errors and set(errors) <= {0, 1}, stderr[-3000:]
    assert len(set(errors.values())) == 1 and "broken.jsonl:1: not valid JSON" in errors[min(errors)], errors
    assert not (tmp_path / "out").exists()


def test_a_rank_that_does_not_print_bad_input_still_records_it(tmp_path):
    reply = tmp_path / "error.json"
    result = run_workbench("sft", "--config", tmp_path / "missing.yaml",
                           env={"RANK": "1", "TORCHELASTIC_ERROR_FILE": str(reply)})
    assert result.returncode == 2 and result.stderr == ""
    assert recorded_errors(tmp_path) == {1: f"{tmp_path / 'missing.yaml'}: file does not exist"}


def test_the_launch_error_is_the_ranks_one_message_or_the_lowest_ranks_named():
    assert launch_error({}) is None
    assert launch_error({1: "data: bad"}) == "data: bad"
    assert launch_error({0: "data: bad", 1: "data: bad"}) == "data: bad"
    assert launch_error({1: "disk full", 0: "data: bad"}) == "rank 0: data: bad"
    assert launch_error({3: "disk full", 2: "out of memory"}) == "rank 2: out of memory"


def test_reply_files_round_trip_and_foreign_ones_are_left_out(tmp_path, monkeypatch):
    for rank, message in ((0, "zero"), (1, "one")):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "run" / "attempt_0" / str(rank) / "error.json"))
        record_error(message)
    torch_own = tmp_path / "run" / "attempt_0" / "2" / "error.json"  # what torch's @record writes
    torch_own.parent.mkdir()
    torch_own.write_text('{"message": {"message": "RuntimeError: x", "extraInfo": {"timestamp": "1"}}}')
    (tmp_path / "run" / "attempt_0" / "3").mkdir()
    (tmp_path / "run" / "attempt_0" / "3" / "error.json").write_text('{"mess')
    assert recorded_errors(tmp_path) == {0: "zero", 1: "one"}


@pytest.mark.parametrize("launch, key, expected", [
    ({"fsdp": True}, "fsdp", "fsdp shards the model over several processes; add nproc: N (N >= 2)"),
    ({"fsdp": True, "nproc": 1}, "nproc", "fsdp shards the model over several processes: expected nproc >= 2, got 1"),
    ({"nproc": 0}, "nproc", "expected at least 1 process, got 0"),
    ({"nproc": "two"}, "nproc", "expected an integer (got 'two')"),
])
def test_bad_launch_options_are_one_line_exit_2_and_write_nothing(tiny_llama, data, tmp_path, launch, key, expected):
    path = write_recipe(tmp_path / "dist.yaml", [sft_step(tiny_llama, data, **launch)])
    result = run_workbench("run", path, "--runs-dir", tmp_path / "runs")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {path}:"), result.stderr
    assert f"step 'ft', key '{key}': {expected}" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_kind_that_runs_in_one_process_takes_no_launch_option(tiny_llama, tmp_path):
    path = write_recipe(tmp_path / "dist.yaml", [{"id": "base", "import": {"path": str(tiny_llama)}, "fsdp": True}])
    with pytest.raises(ConfigError, match=r"dist.yaml:6: step 'base', key 'fsdp': import steps take no launch "
                                          r"option 'fsdp' \(only sft, distill steps do\)$"):
        load_recipe(path)


def test_nproc_needs_torch_distributed(tiny_llama, data, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    path = write_recipe(tmp_path / "dist.yaml", [sft_step(tiny_llama, data, nproc=2)])
    with pytest.raises(ConfigError, match=r"step 'ft', key 'nproc': this PyTorch build has no torch.distributed"):
        load_recipe(path)


def test_fsdp_is_a_launch_option_not_a_parameter_and_its_engine_rules_apply(tiny_llama, data, tmp_path):
    step = sft_step(tiny_llama, data)
    step["sft"]["fsdp"] = True
    with pytest.raises(ConfigError, match=r"step 'ft', key 'fsdp': 'fsdp' is a launch option: write it beside"):
        load_recipe(write_recipe(tmp_path / "a.yaml", [step]))
    distill = {"id": "d", "distill": {"student": str(tiny_llama), "teacher": str(tiny_llama), "data": str(data),
                                      "on_policy": 0.5}, "fsdp": True, "nproc": 2}
    with pytest.raises(ConfigError, match="on_policy sampling is not supported with fsdp"):
        load_recipe(write_recipe(tmp_path / "b.yaml", [distill]))
