"""Bad checkpoints and bad GGUF files: one line naming the file, exit code 2, nothing written."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.cli_helpers import run_workbench
from workbench.cli import main


def copy_of(src, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


def break_missing(ckpt):
    shutil.rmtree(ckpt)


def break_no_config(ckpt):
    (ckpt / "config.json").unlink()


def break_config_json(ckpt):
    (ckpt / "config.json").write_text('{"model_type": "llama",\n  oops}')


def break_truncate(ckpt):
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])


def break_index(ckpt):
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"lm_head.weight": "model.safetensors",
                        "model.norm.weight": "model-00002-of-00002.safetensors"}}))


def break_pickle(ckpt):
    (ckpt / "model.safetensors").rename(ckpt / "pytorch_model.bin")


def edit_config(ckpt, change):
    config = json.loads((ckpt / "config.json").read_text())
    change(config)
    (ckpt / "config.json").write_text(json.dumps(config))


def edit_tensors(ckpt, change):
    tensors = load_file(ckpt / "model.safetensors")
    change(tensors)
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})


def break_config_array(ckpt):
    (ckpt / "config.json").write_text("[1, 2]")


def break_model_type(ckpt):
    edit_config(ckpt, lambda config: config.pop("model_type"))


def break_model_type_typo(ckpt):
    edit_config(ckpt, lambda config: config.update(model_type="lama"))


def break_remote_code(ckpt):
    edit_config(ckpt, lambda config: config.update(
        model_type="my-llama", auto_map={"AutoConfig": "my.Config", "AutoModelForCausalLM": "my.Model"}))


def break_hidden_size(ckpt):
    edit_config(ckpt, lambda config: config.update(hidden_size=64))


def break_config_value(ckpt):
    edit_config(ckpt, lambda config: config.update(num_attention_heads="four"))


def add_unknown_tensor(ckpt):
    edit_tensors(ckpt, lambda tensors: tensors.update({"model.layers.0.mlp.extra.weight": torch.zeros(4, 32)}))


def drop_norm_tensor(ckpt):
    edit_tensors(ckpt, lambda tensors: tensors.pop("model.norm.weight"))


CASES = {
    "missing": (break_missing, "checkpoint directory does not exist"),
    "no-config": (break_no_config, "no config.json"),
    "bad-json": (break_config_json, "config.json: not valid JSON (line 2, column 3"),
    "truncated": (break_truncate, "model.safetensors: truncated safetensors file"),
    "index-missing-shard": (break_index, "names shard 'model-00002-of-00002.safetensors', which does not exist"),
    "pickle-only": (break_pickle, "holds only pickle weights (pytorch_model.bin)"),
    "config-array": (break_config_array, "config.json: expected a JSON object of model settings, got an array"),
}
# Checkpoints whose files read fine but that transformers cannot load as they are: `inspect`
# reads only headers and JSON and shows them; every command that loads the model refuses them.
UNLOADABLE = {
    "no-model-type": (break_model_type, "config.json: no 'model_type', so transformers cannot tell"),
    "model-type-typo": (break_model_type_typo, "config.json: model_type 'lama' is not an architecture"),
    "remote-code": (break_remote_code, "config.json: 'auto_map' asks for the model's own Python code "
                                       "(AutoConfig, AutoModelForCausalLM) and model_type 'my-llama'"),
    "shape-mismatch": (break_hidden_size, "model.safetensors: tensor 'model.embed_tokens.weight' has shape "
                                          "[384, 32], but config.json makes it [384, 64]"),
    "bad-config-value": (break_config_value, "config.json: transformers cannot build a causal LM from it "
                                             "(Validation error for field 'num_attention_heads'"),
    "unknown-tensor": (add_unknown_tensor, "tensor 'model.layers.0.mlp.extra.weight' is not part of "
                                           "LlamaForCausalLM, so it would be dropped"),
    "missing-tensor": (drop_norm_tensor, "LlamaForCausalLM needs tensor 'model.norm.weight', which the "
                                         "checkpoint lacks"),
}


BAD_CHECKPOINT_RUNS = [(case, "inspect") for case in CASES] + [
    ("truncated", "generate"),
    ("pickle-only", "generate"),
    ("config-array", "generate"),
]


@pytest.mark.parametrize(("case", "command"), BAD_CHECKPOINT_RUNS)
def test_bad_checkpoint_is_one_line_exit_2(case, command, tiny_llama, tmp_path):
    breaker, expected = CASES[case]
    ckpt = copy_of(tiny_llama, tmp_path)
    breaker(ckpt)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    args = [command, ckpt] + (["--prompt", "hi"] if command == "generate" else [])
    result = run_workbench(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and expected in lines[0]
    assert str(ckpt) in lines[0]
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "chat.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"count to {i}", "completion": f"{i}"}) + "\n" for i in range(12)))
    return path


def command_line(command, ckpt, chat_file, out):
    if command == "sft":
        return ["sft", "--model", ckpt, "--data", chat_file, "--out", out, "--max-steps", "1", "--no-progress"]
    if command == "eval":
        return ["eval", ckpt, "--data", chat_file, "--out", out, "--limit", "2", "--max-new-tokens", "2"]
    return ["generate", ckpt, "--prompt", "hi", "--max-new-tokens", "2"]


@pytest.mark.parametrize("command", ["sft", "eval", "generate"])
@pytest.mark.parametrize("case", UNLOADABLE)
def test_checkpoint_transformers_cannot_load_as_is_is_one_line_exit_2(case, command, capsys, tiny_llama,
                                                                     chat_file, tmp_path):
    breaker, expected = UNLOADABLE[case]
    ckpt = copy_of(tiny_llama, tmp_path)
    breaker(ckpt)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        main([*map(str, command_line(command, ckpt, chat_file, tmp_path / "out"))])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"error: {ckpt}") and expected in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("case", UNLOADABLE)
def test_inspect_shows_a_checkpoint_transformers_cannot_load(case, capsys, tiny_llama, tmp_path):
    """inspect reads headers and JSON only, so it still describes what is there."""
    ckpt = copy_of(tiny_llama, tmp_path)
    UNLOADABLE[case][0](ckpt)
    main(["inspect", str(ckpt)])
    assert f"checkpoint     {ckpt}" in capsys.readouterr().out


def test_unknown_tensor_is_refused_by_a_real_subprocess(tiny_llama, tmp_path):
    ckpt = copy_of(tiny_llama, tmp_path)
    add_unknown_tensor(ckpt)
    result = run_workbench("generate", ckpt, "--prompt", "hi")
    assert result.returncode == 2
    assert result.stderr == (f"error: {ckpt}: tensor 'model.layers.0.mlp.extra.weight' is not part of "
                             "LlamaForCausalLM, so it would be dropped; remove it or fix config.json's architecture\n")


def test_debug_shows_traceback(tmp_path):
    result = run_workbench("--debug", "inspect", tmp_path / "nope")
    assert result.returncode != 0 and "Traceback" in result.stderr


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not a gguf at all", b"GGUX" + b"\0" * 64])
def test_import_of_non_gguf_is_refused(content, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(content)
    result = run_workbench("import", "gguf", fake, tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {fake}: not a GGUF file")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


def test_import_of_missing_file(tmp_path):
    result = run_workbench("import", "gguf", tmp_path / "nope.gguf", tmp_path / "out")
    assert result.returncode == 2 and "nope.gguf: file does not exist" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_usage_errors_exit_2(tiny_llama):
    assert run_workbench("inspect").returncode == 2
    assert run_workbench("no-such-command").returncode == 2
    result = run_workbench("generate", tiny_llama, "--prompt", "hi", "--max-new-tokens", "0")
    assert result.returncode == 2 and "--max-new-tokens must be at least 1" in result.stderr
