"""Bad SEARCH.yml input: one line naming the key and what was expected, exit code 2, and
neither OUT_DIR nor its trial cache written. The many config cases run the CLI in this process
(``main``, as the console script does) to save a Python start each; the rest as a subprocess."""

from __future__ import annotations

import copy

import pytest
import yaml

from tests.cli_helpers import run_workbench
from tests.test_merge_search import chat_file
from tests.merge_fixtures import perturbed_copy
from tests.tiny_models import make_checkpoint


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("search-errors")
    base = make_checkpoint(root / "base", layers=2, seed=3)
    empty = root / "empty.jsonl"
    empty.write_text("\n")
    return {"base": str(base), "a": str(perturbed_copy(base, root / "a", seed=1, scale=0.05)),
            "b": str(perturbed_copy(base, root / "b", seed=2, scale=0.05)),
            "valid": str(chat_file(root / "valid.jsonl", ["0"] * 10)), "empty": str(empty)}


def good(m) -> dict:
    return {
        "merge_method": "ties", "base_model": m["base"],
        "models": [{"model": m["a"], "parameters": {"weight": 1.0, "density": 0.5}},
                   {"model": m["b"], "parameters": {"weight": 1.0, "density": 0.5}}],
        "search": {"parameters": {"models[0].parameters.density": {"low": 0.1, "high": 1.0}},
                   "objective": [{"data": m["valid"]}], "trials": 2, "sampler": "tpe", "seed": 0},
    }


def set_path(config: dict, path: str, value):
    """config with one key replaced ('search.sampler'), or removed when value is DELETE."""
    config = copy.deepcopy(config)
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is DELETE:
        del node[last]
    else:
        node[int(last) if isinstance(node, list) else last] = value
    return config


DELETE = object()
CASES = [
    # (path in the config, new value, words the one-line error must contain)
    ("search.parameters", {"models[0].weight": {"low": 0, "high": 1}}, ["models[0].weight", "names no parameter"]),
    ("search.parameters", {"parameters.wieght": {"low": 0, "high": 1}}, ["'wieght' is not a parameter of ties",
                                                                        "did you mean 'weight'"]),
    ("search.parameters", {"models[3].parameters.weight": {"low": 0, "high": 1}}, ["has 2 models"]),
    ("search.parameters", {"models[0].parameters.density": {"low": 0.5, "high": 1.5}},
     ["models[0].parameters.density.high", "'density' must be in (0, 1]", "1.5"]),
    ("search.parameters", {"models[0].parameters.density": {"low": 0.0, "high": 1.0}},
     ["density.low", "(0, 1]"]),
    ("search.parameters", {"models[0].parameters.density": {"low": 0.9, "high": 0.2}},
     ["low (0.9) is greater than high (0.2)"]),
    ("search.parameters", {"models[0].parameters.density": {"low": 0.1}}, ["'high' is required"]),
    ("search.parameters", {"models[0].parameters.density": {"low": 0.1, "high": 1, "layers": 0}},
     ["layers", "whole number >= 1"]),
    ("search.parameters", {"models[0].parameters.density": {"low": 0.1, "high": 1, "points": 3}},
     ["only the grid sampler uses points"]),
    ("search.parameters", {"parameters.t": {"low": 0, "high": 1}}, ["'t' is not a parameter of ties",
                                                                    "searchable: weight, density, lambda"]),
    ("search.parameters", {"models[0].parameters.lambda": {"low": 0, "high": 1}},
     ["one value for all models", "search parameters.lambda"]),
    ("search.parameters", {"parameters.weight": {"low": 0.1, "high": 1}},
     ["reaches no model", "models[0], models[1] set their own 'weight'"]),
    ("search.parameters", {}, ["name at least one parameter to search"]),
    ("search.objective", [{"data": "missing.jsonl"}], ["objective[0].data", "'missing.jsonl' does not exist"]),
    ("search.objective", [{"data": "EMPTY"}], ["objective[0].data", "is empty"]),
    ("search.objective", [], ["name at least one validation file"]),
    ("search.objective", [{"data": "VALID", "metric": "bleu"}], ["unknown metric 'bleu'", "loss, exact_match, kl"]),
    ("search.objective", [{"data": "VALID", "metric": "kl"}], ["metric kl needs 'reference'"]),
    ("search.objective", [{"data": "VALID", "weight": 0}], ["objective[0].weight", "must be > 0"]),
    ("search.trials", 0, ["search.trials", "whole number >= 1", "got 0"]),
    ("search.trials", DELETE, ["search.trials", "required"]),
    ("search.sampler", "anneal", ["unknown sampler 'anneal'", "tpe, cmaes, random, grid"]),
    ("search.seed", "zero", ["search.seed", "whole number"]),
    ("search.budget", 3, ["unknown key 'budget'"]),
    ("search", DELETE, ["a 'search:' block is required"]),
    ("merge_method", "dare_ties", ["merge_method 'dare_ties' is not searchable",
                                   "ties: weight, density, lambda", "slerp: t"]),
]


def cli_in_process(capsys, *args) -> tuple[int, str]:
    from workbench.cli import main

    with pytest.raises(SystemExit) as exited:
        main([str(a) for a in args])
    return exited.value.code, capsys.readouterr().err


@pytest.mark.parametrize("path,value,words", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_search_is_one_line_exit_2_nothing_written(inputs, tmp_path, capsys, path, value, words):
    if isinstance(value, list) and value and isinstance(value[0], dict):
        value = [{k: inputs["valid"] if v == "VALID" else inputs["empty"] if v == "EMPTY" else v
                  for k, v in term.items()} for term in value]
    config = set_path(good(inputs), path, value)
    search = tmp_path / "search.yml"
    search.write_text(yaml.safe_dump(config))
    code, stderr = cli_in_process(capsys, "merge-search", search, tmp_path / "out")
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert str(search) in lines[0], lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.trials").exists()


def test_task_arithmetic_density_is_not_searchable(inputs, tmp_path):
    config = set_path(good(inputs), "merge_method", "task_arithmetic")
    search = tmp_path / "search.yml"
    search.write_text(yaml.safe_dump(config))
    done = run_workbench("merge-search", search, tmp_path / "out")
    assert done.returncode == 2
    assert "'density' cannot be searched in task_arithmetic (searchable: weight, lambda)" in done.stderr


def test_a_global_weight_that_normalize_cancels_is_refused(inputs, tmp_path):
    config = good(inputs)
    for entry in config["models"]:
        del entry["parameters"]["weight"]
    config["search"]["parameters"] = {"parameters.weight": {"low": 0.1, "high": 2}}
    search = tmp_path / "search.yml"
    search.write_text(yaml.safe_dump(config))
    done = run_workbench("merge-search", search, tmp_path / "out")
    assert done.returncode == 2 and "cancels out" in done.stderr
    config["parameters"] = {"normalize": False}
    search.write_text(yaml.safe_dump(config))
    assert run_workbench("merge-search", search, tmp_path / "out", "--trials", "1").returncode == 0


def test_trials_option_may_stand_for_search_trials(inputs, tmp_path):
    search = tmp_path / "search.yml"
    search.write_text(yaml.safe_dump(set_path(good(inputs), "search.trials", DELETE)))
    done = run_workbench("merge-search", search, tmp_path / "out", "--trials", "1")
    assert done.returncode == 0, done.stderr
    assert "best of 1 trials" in done.stdout


@pytest.mark.parametrize("args,words", [(["--trials", "0"], ["--trials", "whole number >= 1"]),
                                        (["--trials", "-3"], ["--trials"])])
def test_bad_trials_option(inputs, tmp_path, args, words):
    search = tmp_path / "search.yml"
    search.write_text(yaml.safe_dump(good(inputs)))
    done = run_workbench("merge-search", search, tmp_path / "out", *args)
    assert done.returncode == 2 and all(w in done.stderr for w in words), done.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.trials").exists()


def test_missing_search_file_and_foreign_out_dir(inputs, tmp_path):
    done = run_workbench("merge-search", tmp_path / "nope.yml", tmp_path / "out")
    assert done.returncode == 2 and "nope.yml: search file does not exist" in done.stderr
    search = tmp_path / "search.yml"
    search.write_text(yaml.safe_dump(good(inputs)))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    done = run_workbench("merge-search", search, tmp_path / "mine")
    assert done.returncode == 2 and "not a merge search's output" in done.stderr
    done = run_workbench("merge-search", search, tmp_path / "mine", "--overwrite")
    assert done.returncode == 2 and "not a workbench output" in done.stderr
    assert "trial 1" not in done.stderr  # refused before the search, not after it
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert not (tmp_path / "mine.trials").exists()
