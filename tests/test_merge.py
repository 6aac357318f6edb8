"""What a merged checkpoint carries, the mergekit backend, LoRA inputs and the CLI."""

from __future__ import annotations

import pytest
import torch
import yaml

from tests.cli_helpers import run_workbench
from tests.merge_fixtures import perturbed_copy
from tests.test_merge_equality import assert_same_tensors
from tests.tiny_models import make_checkpoint
from workbench import merge
from workbench.checkpoint import Checkpoint


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge-out")
    base = make_checkpoint(root / "base", arch="qwen2", template="zephyr", layers=2, seed=21)
    return {"base": str(base),
            "a": str(perturbed_copy(base, root / "a", seed=1, scale=0.02)),
            "b": str(perturbed_copy(base, root / "b", seed=2, scale=0.02))}


def ties_config(m):
    return {"merge_method": "ties", "base_model": m["base"], "dtype": "float32",
            "parameters": {"weight": 1.0, "density": 0.6},
            "models": [{"model": m["a"]}, {"model": m["b"], "parameters": {"weight": 0.5}}]}


def test_output_is_a_complete_checkpoint(models, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = merge.run(ties_config(models), tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(out.path)
    tokenizer = AutoTokenizer.from_pretrained(out.path)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert tokenizer.chat_template == Checkpoint(models["base"]).chat_template
    assert "<|assistant|>" in tokenizer.apply_chat_template([{"role": "user", "content": "hi"}],
                                                            tokenize=False, add_generation_prompt=True)
    assert (out.path / "generation_config.json").exists()
    card = (out.path / "README.md").read_text()
    assert "**ties**" in card and models["a"] in card and "density: 0.6" in card
    lineage = out.lineage
    assert lineage["kind"] == "merge" and lineage["parameters"]["method"] == "ties"
    assert lineage["inputs"]["base_model"]["fingerprint"] == Checkpoint(models["base"]).fingerprint()
    assert set(lineage["inputs"]) == {"models[0]", "models[1]", "base_model"}


def test_mergekit_backend_gives_the_same_tensors_and_the_same_extras(models, tmp_path):
    native = merge.run(ties_config(models), tmp_path / "native")
    forced = merge.run(ties_config(models), tmp_path / "mergekit", backend="mergekit")
    assert forced.lineage["parameters"]["backend"] == "mergekit"
    from tests.test_merge_equality import magnitude_cutoff_ties

    assert_same_tensors(forced, native, magnitude_cutoff_ties(ties_config(models), "float32"))
    for name in ("README.md", "chat_template.jinja", "generation_config.json", "tokenizer.json"):
        assert (forced.path / name).exists(), name


def test_other_methods_run_through_mergekit(models, tmp_path):
    config = {"merge_method": "model_stock", "base_model": models["base"],
              "models": [{"model": models["a"]}, {"model": models["b"]}]}
    out = merge.run(config, tmp_path / "stock")
    assert out.lineage["parameters"]["backend"] == "mergekit"
    assert set(out.names()) == set(Checkpoint(models["base"]).names())
    assert not torch.equal(out.read("model.norm.weight"), Checkpoint(models["base"]).read("model.norm.weight"))


def test_lora_input_is_merged_into_its_base_first(models, tmp_path):
    from peft import LoraConfig, get_peft_model

    from workbench.modeling import load_model

    torch.manual_seed(0)
    lora = get_peft_model(load_model(models["base"]), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                 init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    config = {"merge_method": "linear",
              "models": [{"model": f"{models['base']}+{tmp_path / 'adapter'}", "parameters": {"weight": 0.5}},
                         {"model": models["a"], "parameters": {"weight": 0.5}}]}
    native = merge.run(config, tmp_path / "native", backend="native")
    reference = merge.run(config, tmp_path / "mergekit", backend="mergekit")
    assert_same_tensors(reference, native)
    assert "models[0].lora" in native.lineage["inputs"]
    base = Checkpoint(models["base"])
    name = "model.layers.0.self_attn.q_proj.weight"
    plain = (base.read(name) + Checkpoint(models["a"]).read(name)) / 2
    assert not torch.allclose(native.read(name), plain)  # the adapter really contributed


def test_cli_merges_with_summary_line(models, tmp_path):
    config_file = tmp_path / "merge.yml"
    config_file.write_text(yaml.safe_dump({
        "merge_method": "slerp", "base_model": models["a"], "parameters": {"t": [0, 1]},
        "models": [{"model": models["a"]}, {"model": models["b"]}]}))
    result = run_workbench("merge", config_file, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("merged ") and "slerp (native backend)" in result.stdout
    again = run_workbench("merge", config_file, tmp_path / "out", "--overwrite")
    assert again.returncode == 0, again.stderr
    assert Checkpoint(tmp_path / "out").lineage["parameters"]["method"] == "slerp"


@pytest.mark.parametrize("setting", [
    0.3, [0.0, 1.0], [1, 0.2, 0.7], [0.5, 0.5, 0.1, 0.9, 0.0],
    [{"filter": "self_attn", "value": [0, 1]}, {"filter": "mlp", "value": 0.2}, {"value": [1, 0.4]}],
    [{"filter": "q_proj", "value": 0.9}], {"filter": "*", "value": [0.1, 0.6]},
])
def test_parameter_resolution_matches_mergekit(setting):
    """Gradients across layers and first-match filters resolve exactly as mergekit's own code."""
    from mergekit.config import ConditionalParameter, evaluate_setting as mergekit_evaluate

    from workbench.merge.config import evaluate_setting

    def as_mergekit(value):
        if isinstance(value, dict):
            return ConditionalParameter(**value)
        if isinstance(value, list) and value and isinstance(value[0], dict):
            return [ConditionalParameter(**v) for v in value]
        return value

    for name in ("model.layers.3.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight", "model.norm.weight"):
        for t in (0.0, 1 / 3, 0.5, 0.8, 1.0):
            expected = mergekit_evaluate(name, as_mergekit(setting), t, validate=float)
            assert evaluate_setting(setting, name, t) == expected, (name, t)


def test_passthrough_slices_config_end_to_end(tmp_path):
    """A slices-only config (no 'models'): mergekit stacks the layers asked for; the result
    is committed with the tokenizer of the first slice's first source, as mergekit does.
    (llama: mergekit 0.1.5 cannot stack configs with a per-layer layer_types list, qwen2's.)"""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path / "inputs"
    base = make_checkpoint(root / "base", arch="llama", template="zephyr", layers=2, seed=5)
    models = {"a": str(perturbed_copy(base, root / "a", seed=1, scale=0.02)),
              "b": str(perturbed_copy(base, root / "b", seed=2, scale=0.02))}
    config = {"merge_method": "passthrough", "dtype": "float32",
              "slices": [{"sources": [{"model": models["a"], "layer_range": [0, 2]}]},
                         {"sources": [{"model": models["b"], "layer_range": [1, 2]}]}]}
    out = merge.run(config, tmp_path / "stacked")
    model = AutoModelForCausalLM.from_pretrained(out.path)
    assert model.config.num_hidden_layers == 3
    name = "self_attn.q_proj.weight"
    a, b = Checkpoint(models["a"]), Checkpoint(models["b"])
    assert torch.equal(out.read(f"model.layers.1.{name}"), a.read(f"model.layers.1.{name}"))
    assert torch.equal(out.read(f"model.layers.2.{name}"), b.read(f"model.layers.1.{name}"))
    assert AutoTokenizer.from_pretrained(out.path).chat_template == a.chat_template
    assert set(out.lineage["inputs"]) == {"slices[0].sources[0]", "slices[1].sources[0]"}
    assert f"come from `{models['a']}`" in (out.path / "README.md").read_text()
