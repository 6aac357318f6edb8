"""Bad merge input: one line naming the problem, exit code 2, nothing written, and found
before any tensor is read."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.cli_helpers import run_workbench
from tests.merge_fixtures import perturbed_copy
from tests.tiny_models import make_checkpoint
from workbench.checkpoint import Checkpoint
from workbench.cli import main
from workbench.merge.reader import MappedCheckpoint


def edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge-bad")
    base = make_checkpoint(root / "base", arch="llama", layers=2, seed=11)
    q_proj = "model.layers.1.self_attn.q_proj.weight"
    return {
        "base": str(base),
        "a": str(perturbed_copy(base, root / "a", seed=1, scale=0.01)),
        "b": str(perturbed_copy(base, root / "b", seed=2, scale=0.01)),
        "narrow": str(perturbed_copy(base, root / "narrow", seed=3, scale=0.01,
                                     transform=lambda n, t: t[:-4] if n == q_proj else t)),
        "missing": str(perturbed_copy(base, root / "missing", seed=4, scale=0.01,
                                      transform=lambda n, t: None if n == q_proj else t)),
        "mistral": str(edit_config(perturbed_copy(base, root / "mistral", seed=5, scale=0.01),
                                   architectures=["MistralForCausalLM"])),
        "bigvocab": str(edit_config(perturbed_copy(
            base, root / "bigvocab", seed=6, scale=0.01,
            transform=lambda n, t: t.repeat(2, 1) if n in ("model.embed_tokens.weight", "lm_head.weight") else t),
            vocab_size=768)),
    }


def ties(m, *names, **parameters):
    return {"merge_method": "ties", "base_model": m["base"],
            "parameters": {"weight": 1.0, "density": 0.5, **parameters},
            "models": [{"model": m[n]} for n in names]}


BAD = {
    "shape": (lambda m: ties(m, "a", "narrow"),
              "tensor 'model.layers.1.self_attn.q_proj.weight' has shape [32, 32] in", "[28, 32]"),
    "architecture": (lambda m: ties(m, "a", "mistral"), "different architectures", "MistralForCausalLM"),
    "vocab": (lambda m: ties(m, "a", "bigvocab"), "different vocab sizes", "tokenizer_source"),
    "missing-tensor": (lambda m: ties(m, "a", "missing"),
                       "tensor 'model.layers.1.self_attn.q_proj.weight' is in", "missing in"),
    "slerp-three": (lambda m: {"merge_method": "slerp", "base_model": m["base"], "parameters": {"t": 0.5},
                               "models": [{"model": m["a"]}, {"model": m["b"]}]},
                    "slerp merges exactly two models", "got 3"),
    "ties-no-base": (lambda m: {k: v for k, v in ties(m, "a", "b").items() if k != "base_model"},
                     "ties needs a base_model", ""),
    "density-zero": (lambda m: ties(m, "a", "b", density=0), "'density' must be in (0, 1]", "got 0"),
    "density-filtered": (lambda m: ties(m, "a", "b", density=[{"filter": "mlp", "value": [0.5, 1.5]}]),
                         "'density' must be in (0, 1]", "got 1.5"),
    "t-gradient": (lambda m: {"merge_method": "slerp", "base_model": m["base"], "parameters": {"t": [0, 1.2]},
                              "models": [{"model": m["a"]}]}, "'t' must be in [0, 1]", "got 1.2"),
    "method": (lambda m: {**ties(m, "a"), "merge_method": "tie"}, "unknown merge_method 'tie'",
               "did you mean 'ties'"),
    "parameter": (lambda m: ties(m, "a", "b", densty=0.5), "unknown parameter 'densty'",
                  "did you mean 'density'"),
    "path": (lambda m: ties(m, "a") | {"models": [{"model": m["a"] + "-nope"}]}, "does not exist", "-nope"),
    "zero-weights": (lambda m: {"merge_method": "linear", "models": [
        {"model": m["a"], "parameters": {"weight": 1.0}}, {"model": m["b"], "parameters": {"weight": -1.0}}]},
        "weights sum to 0", "normalize"),
}


@pytest.fixture
def no_tensor_reads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a tensor was read before the input was validated")

    monkeypatch.setattr(Checkpoint, "read", refuse)
    monkeypatch.setattr(MappedCheckpoint, "flat", refuse)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_nothing_written(inputs, tmp_path, capsys, no_tensor_reads, case):
    make, *expected = BAD[case]
    config_file = tmp_path / "merge.yml"
    config_file.write_text(yaml.safe_dump(make(inputs)))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["merge", str(config_file), str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in expected:
        assert fragment in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merge.yml"]


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    config_file = tmp_path / "merge.yml"
    config_file.write_text("merge_method: ties\nmodels:\n  - model: [a\n")
    result = run_workbench("merge", config_file, tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {config_file}: YAML does not parse (line 4, column 1")
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(inputs, tmp_path, capsys):
    config_file = tmp_path / "merge.yml"
    config_file.write_text(yaml.safe_dump(ties(inputs, "a", "b")))
    (tmp_path / "out").mkdir()
    with pytest.raises(SystemExit):
        main(["merge", str(config_file), str(tmp_path / "out")])
    assert "already exists (pass --overwrite" in capsys.readouterr().err


def test_native_backend_refuses_other_methods(inputs, tmp_path, capsys):
    config_file = tmp_path / "merge.yml"
    config_file.write_text(yaml.safe_dump({**ties(inputs, "a", "b"), "merge_method": "dare_ties"}))
    with pytest.raises(SystemExit):
        main(["merge", str(config_file), str(tmp_path / "out"), "--backend", "native"])
    assert "merge_method 'dare_ties' is not native" in capsys.readouterr().err
