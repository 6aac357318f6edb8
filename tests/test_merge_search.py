"""merge_search: the best trial is what `workbench merge` writes, in-memory measurement equals
measurement of the written checkpoint, known optima are found, and killed or extended searches
replay their finished trials instead of re-running them."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from tests.cli_helpers import REPO_ROOT, run_workbench
from tests.merge_fixtures import perturbed_copy
from tests.test_merge_equality import assert_same_tensors
from tests.tiny_models import make_checkpoint
from workbench import merge, merge_search
from workbench.checkpoint import Checkpoint
from workbench.merge_search.space import parse_search

PROMPTS = [f"what is {i} plus {i}?" for i in range(10)]


def chat_file(path, answers):
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}
            for p, a in zip(PROMPTS, answers)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("search-inputs")
    base = make_checkpoint(root / "base", layers=3, seed=3)
    bf16_base = make_checkpoint(root / "base-bf16", layers=3, seed=3, dtype=torch.bfloat16)
    return {
        "root": root,
        "base": str(base),
        "a": str(perturbed_copy(base, root / "a", seed=1, scale=0.05)),
        "b": str(perturbed_copy(base, root / "b", seed=2, scale=0.05)),
        "base-bf16": str(bf16_base),
        "a-bf16": str(perturbed_copy(bf16_base, root / "a-bf16", seed=1, scale=0.05, dtype=torch.bfloat16)),
        "b-bf16": str(perturbed_copy(bf16_base, root / "b-bf16", seed=2, scale=0.05, dtype=torch.bfloat16)),
        "valid": str(chat_file(root / "valid.jsonl", [str(2 * i) for i in range(len(PROMPTS))])),
    }


def ties_search(m, suffix="", **search):
    return {
        "merge_method": "ties",
        "base_model": m["base" + suffix],
        "models": [{"model": m["a" + suffix], "parameters": {"weight": 1.0, "density": 0.5}},
                   {"model": m["b" + suffix], "parameters": {"weight": 1.0, "density": 0.5}}],
        "search": {
            "parameters": {"models[0].parameters.weight": {"low": 0.2, "high": 1.5},
                           "models[1].parameters.density": {"low": 0.1, "high": 1.0},
                           "parameters.lambda": {"low": 0.5, "high": 1.5, "layers": 3}},
            "objective": [{"data": m["valid"]}, {"data": m["valid"], "metric": "exact_match", "weight": 0.5}],
            "trials": 3, "sampler": "random", "seed": 0, "max_new_tokens": 4, **search,
        },
    }


def read_csv(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def without_timing(rows):
    return [{k: v for k, v in row.items() if k not in ("seconds", "cached")} for row in rows]


@pytest.mark.parametrize("suffix", ["", "-bf16"])
def test_best_trial_is_what_workbench_merge_writes(models, suffix, tmp_path):
    search = ties_search(models, suffix, trials=1)
    result = merge_search.run(search, tmp_path / "best", log=lambda line: None)
    best = result.best.values
    assert set(best) == {"models[0].parameters.weight", "models[1].parameters.density",
                         "parameters.lambda[0]", "parameters.lambda[1]", "parameters.lambda[2]"}
    config = {k: v for k, v in search.items() if k != "search"}
    config["models"][0]["parameters"]["weight"] = best["models[0].parameters.weight"]
    config["models"][1]["parameters"]["density"] = best["models[1].parameters.density"]
    config["parameters"] = {"lambda": [best[f"parameters.lambda[{k}]"] for k in range(3)]}
    (tmp_path / "merge.yml").write_text(yaml.safe_dump(config))
    done = run_workbench("merge", tmp_path / "merge.yml", tmp_path / "merged")
    assert done.returncode == 0, done.stderr
    searched, merged = Checkpoint(tmp_path / "best"), Checkpoint(tmp_path / "merged")
    assert set(searched.names()) == set(merged.names())
    for name in merged.names():
        assert searched.read(name).dtype == merged.read(name).dtype
        assert torch.equal(searched.read(name), merged.read(name)), name
    if suffix:
        assert searched.read("model.norm.weight").dtype == torch.bfloat16


def test_in_memory_measurement_equals_the_written_checkpoints(models, tmp_path):
    from workbench.merge_search.objective import Objective
    from workbench.modeling import load_model, load_tokenizer

    search = ties_search(models, trials=2)
    result = merge_search.run(search, tmp_path / "best", log=lambda line: None)
    spec = parse_search(search, "test")
    objective = Objective(spec, load_tokenizer(tmp_path / "best"))
    measured = objective.measure(load_model(tmp_path / "best"))
    assert measured == pytest.approx(result.best.terms, abs=1e-6)
    rows = read_csv(tmp_path / "best" / "trials.csv")
    best_row = min(rows, key=lambda r: float(r["objective"]))
    loss, mismatch = list(result.best.terms)
    assert loss.endswith("/valid loss") and mismatch.endswith("/valid 1-exact_match")
    assert float(best_row["objective"]) == pytest.approx(result.best.objective)
    assert float(best_row["objective"]) == pytest.approx(float(best_row[loss]) + 0.5 * float(best_row[mismatch]))


def test_output_carries_lineage_report_and_plot(models, tmp_path):
    result = merge_search.run(ties_search(models, trials=4), tmp_path / "best", log=lambda line: None)
    out = result.checkpoint
    lineage = out.lineage
    recorded = lineage["parameters"]["search"]
    assert lineage["kind"] == "merge" and recorded["trial"] == result.best.number
    assert recorded["parameters"] == result.best.values and recorded["trials"] == 4
    assert lineage["inputs"]["objective[0].data"]["path"] == models["valid"]
    rows = read_csv(out.path / "trials.csv")
    assert [int(r["trial"]) for r in rows] == [1, 2, 3, 4]
    assert list(rows[0])[:6] == ["trial", "models[0].parameters.weight", "models[1].parameters.density",
                                 "parameters.lambda[0]", "parameters.lambda[1]", "parameters.lambda[2]"]
    assert (out.path / "objective.png").read_bytes()[:4] == b"\x89PNG"
    report = (out.path / "search.md").read_text()
    assert f"Best: trial {result.best.number}" in report and "models[1].parameters.density" in report


@pytest.mark.parametrize("sampler", ["tpe", "cmaes"])
def test_finds_the_weights_of_a_known_mix(sampler, tmp_path):
    """The validation data and the KL reference come from a model that is the linear mix
    0.3 a + 0.6 b: the search over both weights must land near (0.3, 0.6). (The inputs' output
    layers are scaled up 3x so that their next-token distributions are peaked enough for the
    KL to tell weights 0.05 apart; a tiny random model's are nearly uniform.)"""
    from workbench.modeling import generate_text
    from workbench.modeling import load_model, load_tokenizer

    base = make_checkpoint(tmp_path / "base", layers=2, seed=11)
    sharper = lambda name, tensor: tensor * 3 if name == "lm_head.weight" else tensor  # noqa: E731
    a = perturbed_copy(base, tmp_path / "a", seed=1, scale=0.1, transform=sharper)
    b = perturbed_copy(base, tmp_path / "b", seed=2, scale=0.1, transform=sharper)
    mix = {"merge_method": "linear", "parameters": {"normalize": False},
           "models": [{"model": str(a), "parameters": {"weight": 0.3}},
                      {"model": str(b), "parameters": {"weight": 0.6}}]}
    merge.run(mix, tmp_path / "mix")
    model, tokenizer = load_model(tmp_path / "mix"), load_tokenizer(tmp_path / "mix")
    answers = [generate_text(model, tokenizer, p, max_new_tokens=6) or "0" for p in PROMPTS]
    data = chat_file(tmp_path / "generated.jsonl", answers)
    search = {**mix, "models": [{"model": str(a), "parameters": {"weight": 1.0}},
                                {"model": str(b), "parameters": {"weight": 1.0}}], "search": {
        "parameters": {"models[0].parameters.weight": {"low": 0.0, "high": 1.0},
                       "models[1].parameters.weight": {"low": 0.0, "high": 1.0}},
        "objective": [{"data": str(data), "metric": "kl", "reference": str(tmp_path / "mix")}],
        "trials": 30, "sampler": sampler, "seed": 0}}
    result = merge_search.run(search, tmp_path / "found", log=lambda line: None)
    found = result.best.values
    assert found["models[0].parameters.weight"] == pytest.approx(0.3, abs=0.05)
    assert found["models[1].parameters.weight"] == pytest.approx(0.6, abs=0.05)


def test_first_trial_is_the_config_as_written(models, tmp_path):
    search = ties_search(models, sampler="tpe", trials=2)
    search["models"][0]["parameters"]["weight"] = 0.7
    result = merge_search.run(search, tmp_path / "best", log=lambda line: None)
    assert result.records[0].values == {"models[0].parameters.weight": 0.7, "models[1].parameters.density": 0.5,
                                        "parameters.lambda[0]": 1.0, "parameters.lambda[1]": 1.0,
                                        "parameters.lambda[2]": 1.0}  # lambda: ties' default
    assert result.records[1].values != result.records[0].values
    search["models"][0]["parameters"]["weight"] = 1.8  # outside the range: no such first trial
    outside = merge_search.run(search, tmp_path / "outside", log=lambda line: None)
    assert outside.records[0].values["models[0].parameters.weight"] != 1.8


def test_more_trials_replay_the_cached_ones(models, tmp_path):
    search = ties_search(models, sampler="tpe")
    first = merge_search.run(search, tmp_path / "best", trials=3, log=lambda line: None)
    assert not any(r.cached for r in first.records)
    longer = merge_search.run(search, tmp_path / "best", trials=5, log=lambda line: None)
    assert [r.cached for r in longer.records] == [True, True, True, False, False]
    assert [r.values for r in longer.records[:3]] == [r.values for r in first.records]
    fresh = merge_search.run(search, tmp_path / "fresh", trials=5, log=lambda line: None)
    assert [(r.values, r.objective) for r in fresh.records] == [(r.values, r.objective) for r in longer.records]


def test_grid_sampler_tries_each_grid_point_once(models, tmp_path):
    search = ties_search(models, sampler="grid", trials=50)
    search["search"]["parameters"] = {"models[1].parameters.density": {"low": 0.2, "high": 1.0, "points": 3},
                                      "parameters.lambda": {"low": 0.5, "high": 1.0, "points": 2}}
    result = merge_search.run(search, tmp_path / "best", log=lambda line: None)
    points = sorted((r.values["models[1].parameters.density"], r.values["parameters.lambda"])
                    for r in result.records)
    assert points == [(d, l) for d in (0.2, 0.6, 1.0) for l in (0.5, 1.0)]


def wait_for_files(directory, count, process, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if directory.is_dir() and len(list(directory.glob("*.json"))) >= count:
            return
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.01)
    raise TimeoutError(directory)


def test_killed_search_resumes_to_the_uninterrupted_result(models, tmp_path):
    path = tmp_path / "search.yml"
    path.write_text(yaml.safe_dump(ties_search(models, sampler="tpe", trials=6)))
    whole = run_workbench("merge-search", path, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "workbench", "merge-search", str(path), str(tmp_path / "cut")],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trials_dir = tmp_path / "cut.trials"
    wait_for_files(trials_dir, 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(list(trials_dir.glob("*.json")))
    assert finished < 6 and not (tmp_path / "cut").exists()
    resumed = run_workbench("merge-search", path, tmp_path / "cut")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.count("[cached]") == finished
    assert f"({6 - finished} measured, {finished} cached)" in resumed.stdout
    whole_rows = read_csv(tmp_path / "whole" / "trials.csv")
    resumed_rows = read_csv(tmp_path / "cut" / "trials.csv")
    assert without_timing(resumed_rows) == without_timing(whole_rows)
    assert [r["cached"] for r in resumed_rows] == ["1"] * finished + ["0"] * (6 - finished)
    assert_same_tensors(Checkpoint(tmp_path / "whole"), Checkpoint(tmp_path / "cut"))


def test_cli_prints_a_line_per_trial_and_the_best(models, tmp_path):
    path = tmp_path / "search.yml"
    path.write_text(yaml.safe_dump(ties_search(models, trials=2)))
    done = run_workbench("merge-search", path, tmp_path / "best")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.startswith("trial ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    assert "models[0].parameters.weight=" in lines[0] and "objective" in lines[0] and "best" in lines[0]
    assert "best of 2 trials" in done.stdout and str(tmp_path / "best") in done.stdout
    again = run_workbench("merge-search", path, tmp_path / "best")  # an earlier search's output is replaced
    assert again.returncode == 0 and "(0 measured, 2 cached)" in again.stdout
