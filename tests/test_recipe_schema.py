"""Recipe validation: every problem found before anything runs, each with its step id and key."""

from pathlib import Path

import pytest
import yaml

from tests.cli_helpers import run_workbench
from workbench.errors import ConfigError
from workbench.distill.cache import MANIFEST
from workbench.recipe import load_recipe
from workbench.recipe.fingerprint import ContentHashes, step_fingerprint
from workbench.recipe.schema import Ref, WithAdapter


def write_recipe(tmp_path: Path, recipe: dict) -> Path:
    (tmp_path / "train.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def chain(*steps, **top) -> dict:
    return {"name": "t", **top, "steps": [{"id": "base", "import": {"tiny": {"seed": 0}}}, *steps]}


def problems(tmp_path, recipe, overrides=()) -> str:
    with pytest.raises(ConfigError) as caught:
        load_recipe(write_recipe(tmp_path, recipe), list(overrides))
    return str(caught.value)


def test_valid_recipe_resolves_refs_paths_defaults_and_types(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, chain(
        {"id": "expert", "sft": {"model": "base", "data": "train.jsonl", "lora-rank": 4, "lr": "5e-5"}},
        {"id": "eval", "eval": {"models": ["expert"], "data": "train.jsonl"}},
        defaults={"sft": {"epochs": 2, "lr": 1e-3}})))
    expert = recipe.steps["expert"]
    assert expert.params["model"] == Ref("base")
    assert expert.params["data"] == tmp_path / "train.jsonl"
    assert expert.params["lora_rank"] == 4
    assert expert.params["lr"] == 5e-5 and isinstance(expert.params["lr"], float)  # YAML read it as a string
    assert expert.params["epochs"] == 2  # from defaults
    assert recipe.steps["eval"].params["data"] == [tmp_path / "train.jsonl"]
    assert list(recipe.steps) == ["base", "expert", "eval"]


def test_steps_are_ordered_by_dependency_not_by_position(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, {"name": "t", "steps": [
        {"id": "eval", "eval": {"models": ["expert"], "data": "train.jsonl"}},
        {"id": "expert", "sft": {"model": "base", "data": "train.jsonl"}},
        {"id": "base", "import": {"tiny": {}}}]}))
    assert list(recipe.steps) == ["base", "expert", "eval"]
    assert recipe.downstream("expert") == ["expert", "eval"]


def test_every_problem_is_reported_at_once_with_step_and_key(tmp_path):
    message = problems(tmp_path, chain(
        {"id": "a", "sft": {"model": "bse", "data": "missing.jsonl", "epoch": 2, "batch_size": "eight"}},
        {"id": "a", "sft": {"model": "base", "data": "train.jsonl"}},
        {"id": "b", "sfft": {"model": "base"}}))
    assert "6 problems" in message
    assert "step 'a', key 'model': 'bse' is neither a step id nor an existing path" in message
    assert "(did you mean 'base'?)" in message
    assert "step 'a', key 'data': data file 'missing.jsonl' does not exist" in message
    assert "step 'a', key 'epoch': unknown parameter for sft (did you mean 'epochs'?)" in message
    assert "step 'a', key 'batch_size': expected an integer (got 'eight')" in message
    assert "step 'a': duplicate step id" in message
    assert "step 'b': unknown step kind or key 'sfft'" in message and "(did you mean 'sft'?)" in message


def test_cycle_is_named(tmp_path):
    message = problems(tmp_path, chain({"id": "x", "sft": {"model": "y", "data": "train.jsonl"}},
                                       {"id": "y", "sft": {"model": "x", "data": "train.jsonl"}}))
    assert "cycle: x -> y -> x" in message or "cycle: y -> x -> y" in message


def test_runner_owned_and_missing_required_keys(tmp_path):
    message = problems(tmp_path, chain({"id": "x", "sft": {"model": "base", "out": "elsewhere"}}))
    assert "step 'x', key 'out': 'out' is set by the runner" in message
    assert "step 'x', key 'data': missing required parameter 'data'" in message


def test_matrix_expands_into_variants_with_derived_ids(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, chain(
        {"id": "ft", "sft": {"model": "base", "data": "train.jsonl"},
         "matrix": {"lr": ["5e-5", "3e-5"], "epochs": [1, 2]}},
        {"id": "eval", "eval": {"models": ["ft"], "data": "train.jsonl", "reference": "ft-3e-5-2"}})))
    ids = [s for s in recipe.steps if s.startswith("ft-")]
    assert ids == ["ft-5e-5-1", "ft-5e-5-2", "ft-3e-5-1", "ft-3e-5-2"]
    assert recipe.steps["ft-3e-5-2"].params["lr"] == 3e-5 and recipe.steps["ft-3e-5-2"].params["epochs"] == 2
    assert recipe.steps["eval"].params["models"] == [Ref(i) for i in ids]  # the matrix id names all variants
    assert recipe.steps["eval"].params["reference"] == Ref("ft-3e-5-2")


def test_matrix_step_as_a_single_input_must_name_a_variant(tmp_path):
    message = problems(tmp_path, chain(
        {"id": "ft", "sft": {"model": "base", "data": "train.jsonl"}, "matrix": {"lr": [1e-3, 1e-4]}},
        {"id": "again", "sft": {"model": "ft", "data": "train.jsonl"}}))
    assert "step 'again', key 'model': 'ft' is a matrix of steps; name one of ft-0.001, ft-0.0001" in message


def test_set_overrides_a_step_a_variant_and_nested_keys(tmp_path):
    path = write_recipe(tmp_path, chain(
        {"id": "ft", "sft": {"model": "base", "data": "train.jsonl"}, "matrix": {"lr": [1e-3, 1e-4]}},
        {"id": "soup", "merge": {"merge_method": "linear", "models": [{"model": "ft-0.001"}],
                                 "parameters": {"normalize": True}}}))
    recipe = load_recipe(path, ["ft.epochs=5", "ft-0.0001.seed=7", "soup.parameters.normalize=false"])
    assert recipe.steps["ft-0.001"].params["epochs"] == 5 and recipe.steps["ft-0.0001"].params["epochs"] == 5
    assert recipe.steps["ft-0.0001"].params["seed"] == 7 and "seed" not in recipe.steps["ft-0.001"].params
    assert recipe.steps["soup"].params["parameters"]["normalize"] is False
    assert recipe.steps["soup"].params["models"][0]["model"] == Ref("ft-0.001")
    message = problems(tmp_path, yaml.safe_load(path.read_text()), ["ftt.epochs=1"])
    assert "--set 'ftt.epochs=1': expected STEP.KEY=VALUE" in message and "(did you mean 'ft'?)" in message


def test_bad_recipe_on_the_command_line_exits_2_and_writes_nothing(tmp_path):
    path = write_recipe(tmp_path, chain({"id": "x", "sft": {"model": "base", "data": "train.jsonl",
                                                            "learning_rate": 1e-4}}))
    result = run_workbench("run", path, "--runs-dir", tmp_path / "runs")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "step 'x', key 'learning_rate'" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: t\nsteps:\n  - id: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: YAML does not parse \(line \d+, column \d+\)"):
        load_recipe(path)


def test_teacher_cache_resolves_relative_to_the_recipe_and_its_manifest_is_fingerprinted(tmp_path):
    cache = tmp_path / "caches" / "soup"
    cache.mkdir(parents=True)
    (cache / MANIFEST).write_text('{"format": 1, "teacher_fingerprint": "aaa"}\n')
    recipe = load_recipe(write_recipe(tmp_path, chain(
        {"id": "d", "distill": {"student": "base", "data": "train.jsonl", "teacher_cache": "caches/soup"}})))
    step = recipe.steps["d"]
    assert step.params["teacher_cache"] == cache

    def cache_part():
        return step_fingerprint(step.kind, step.params, {"base": "f0"}, ContentHashes())[1]["teacher_cache"]

    before = cache_part()
    (cache / MANIFEST).write_text('{"format": 1, "teacher_fingerprint": "bbb"}\n')  # a remade cache
    assert cache_part() != before


def test_missing_teacher_cache_is_a_validation_error_naming_step_and_key(tmp_path):
    (tmp_path / "not-a-cache").mkdir()
    message = problems(tmp_path, chain(
        {"id": "d", "distill": {"student": "base", "data": "train.jsonl", "teacher_cache": "nowhere"}},
        {"id": "e", "distill": {"student": "base", "data": "train.jsonl", "teacher_cache": "not-a-cache"}}))
    assert "2 problems" in message
    assert "step 'd', key 'teacher_cache': teacher cache 'nowhere' does not exist" in message
    assert "step 'e', key 'teacher_cache': teacher cache 'not-a-cache' does not exist" in message


def merge_of(model: str) -> dict:
    return {"id": "soup", "merge": {"merge_method": "linear", "models": [{"model": model}, {"model": "base"}]}}


def test_model_plus_lora_resolves_each_side_and_depends_on_both(tmp_path):
    adapter = tmp_path / "adapters" / "a"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    lora = {"id": "lora", "sft": {"model": "base", "data": "train.jsonl", "lora_rank": 4}}
    recipe = load_recipe(write_recipe(tmp_path, chain(lora, merge_of("base+lora"))))
    soup = recipe.steps["soup"]
    assert soup.params["models"][0]["model"] == WithAdapter(Ref("base"), Ref("lora", "adapter"))
    assert soup.dependencies == ["base", "lora"]
    assert list(recipe.steps) == ["base", "lora", "soup"]

    recipe = load_recipe(write_recipe(tmp_path, chain(lora, merge_of("lora+adapters/a"))))
    assert recipe.steps["soup"].params["models"][0]["model"] == WithAdapter(Ref("lora"), adapter)


def test_a_bad_side_of_model_plus_lora_names_the_step_and_key(tmp_path):
    (tmp_path / "plain-dir").mkdir()
    full = {"id": "full", "sft": {"model": "base", "data": "train.jsonl"}}
    for model, expected in [
        ("base+full", "'full' after '+' must be a LoRA adapter, but step 'full' writes none"),
        ("base+plain-dir", "'plain-dir' after '+' is not a LoRA adapter (no adapter_config.json)"),
        ("base+nope", "'nope' is neither a step id nor an existing path"),
        ("bse+full", "'bse' is neither a step id nor an existing path"),
        ("base+full+full", "'base+full+full' is neither MODEL nor MODEL+LORA"),
    ]:
        message = problems(tmp_path, chain(full, merge_of(model)))
        assert f"step 'soup', key 'models[0].model': {expected}" in message, (model, message)


def test_bad_teacher_cache_and_lora_side_on_the_command_line_exit_2_and_write_nothing(tmp_path):
    path = write_recipe(tmp_path, chain(
        {"id": "d", "distill": {"student": "base", "data": "train.jsonl", "teacher_cache": "nowhere"}},
        merge_of("base+d")))
    result = run_workbench("run", path, "--runs-dir", tmp_path / "runs")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "step 'd', key 'teacher_cache': teacher cache 'nowhere' does not exist" in result.stderr
    assert "step 'soup', key 'models[0].model': 'd' after '+' must be a LoRA adapter" in result.stderr
    assert not (tmp_path / "runs").exists()


def line_of(path: Path, text: str) -> int:
    """The 1-based line of ``path`` that holds ``text``."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), start=1) if text in line)


@pytest.mark.parametrize("assignment, message", [
    ("x.lr=[1,", "--set 'x.lr=[1,': YAML does not parse (line 1, column 4)"),
    ("x.lr=-1", "step 'x', key 'lr' (--set 'x.lr=-1'): lr must be > 0"),  # YAML, but the engine refuses it
])
def test_a_bad_set_value_is_one_line_exit_2_and_stops_the_recipe_before_any_step_runs(tmp_path, assignment, message):
    """The import step before x would otherwise run and write its state and the report."""
    path = write_recipe(tmp_path, chain({"id": "x", "sft": {"model": "base", "data": "train.jsonl"}}))
    result = run_workbench("run", path, "--runs-dir", tmp_path / "runs", "--set", assignment)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "runs").exists()


def test_engine_validation_of_every_step_names_the_line_step_and_key(tmp_path):
    path = write_recipe(tmp_path, chain(
        {"id": "x", "sft": {"model": "base", "data": "train.jsonl", "schedule": "nope"}},
        {"id": "e", "eval": {"models": ["x"], "data": "train.jsonl", "match": "fuzzy"}},
        {"id": "other", "import": {"tiny": {"layers": "two"}}}))
    message = problems(tmp_path, yaml.safe_load(path.read_text()))
    assert "3 problems" in message
    assert f"line {line_of(path, 'id: other')}: step 'other': tiny: 'layers' must be an integer, got 'two'" in message
    assert (f"line {line_of(path, 'schedule: nope')}: step 'x', key 'schedule': schedule must be one of"
            in message)
    assert f"line {line_of(path, 'match: fuzzy')}: step 'e', key 'match': match must be one of" in message


def test_a_single_problem_is_one_line_with_file_and_line(tmp_path):
    path = write_recipe(tmp_path, chain({"id": "x", "sft": {"model": "base", "data": "train.jsonl",
                                                            "batch_size": "eight"}}))
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    assert str(caught.value) == (f"{path}:{line_of(path, 'batch_size: eight')}: step 'x', key 'batch_size': "
                                 "expected an integer (got 'eight')")


def test_a_key_from_defaults_is_located_where_the_defaults_give_it(tmp_path):
    path = write_recipe(tmp_path, chain({"id": "x", "sft": {"model": "base", "data": "train.jsonl"}},
                                        defaults={"sft": {"epochs": "two"}}))
    message = problems(tmp_path, yaml.safe_load(path.read_text()))
    assert f":{line_of(path, 'epochs: two')}: step 'x', key 'epochs': expected an integer" in message
