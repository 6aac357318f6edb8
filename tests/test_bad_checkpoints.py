"""Bad checkpoints and bad GGUF files: one line naming the file, exit code 2, nothing written."""

import json
import shutil

import pytest

from tests.cli_helpers import run_workbench


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


CASES = {
    "missing": (break_missing, "checkpoint directory does not exist"),
    "no-config": (break_no_config, "no config.json"),
    "bad-json": (break_config_json, "config.json: not valid JSON (line 2, column 3"),
    "truncated": (break_truncate, "model.safetensors: truncated safetensors file"),
    "index-missing-shard": (break_index, "names shard 'model-00002-of-00002.safetensors', which does not exist"),
    "pickle-only": (break_pickle, "holds only pickle weights (pytorch_model.bin)"),
}


BAD_CHECKPOINT_RUNS = [(case, "inspect") for case in CASES] + [
    ("truncated", "generate"),
    ("pickle-only", "generate"),
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
