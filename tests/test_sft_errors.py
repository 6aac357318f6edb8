"""Bad input to `workbench sft`: one line on stderr, exit code 2, nothing written."""

from __future__ import annotations

import json
import re

import pytest

from tests.cli_helpers import run_workbench
from workbench.cli import main
from workbench.commands.config_options import config_from_cli
from workbench.errors import ConfigError
from workbench.sft import SFTConfig


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sft-errors") / "train.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"count to {i}", "completion": f"{i}"}) + "\n"
                            for i in range(12)))
    return path


def cli_error(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["sft", *map(str, args), "--no-progress"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("extra, message", [
    (["--batch-size", "0"], "batch_size must be a positive integer"),
    (["--lr", "0"], "lr must be > 0"),
    (["--lr", "-1e-4"], "lr must be > 0"),
    (["--lora-rank", "4", "--lora-targets", "q_proj,qv_proj"],
     "has no linear module 'qv_proj'.*available: all-linear, down_proj, gate_proj, k_proj, o_proj, q_proj"),
])
def test_bad_options_exit_2_and_write_nothing(capsys, tiny_llama, data_file, tmp_path, extra, message):
    out = tmp_path / "out"
    line = cli_error(capsys, "--model", tiny_llama, "--data", data_file, "--out", out, *extra)
    assert re.search(message, line), line
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_model_that_is_not_a_checkpoint(capsys, data_file, tmp_path):
    (tmp_path / "not-a-model").mkdir()
    line = cli_error(capsys, "--model", tmp_path / "not-a-model", "--data", data_file, "--out", tmp_path / "out")
    assert "no config.json" in line and not (tmp_path / "out").exists()


def test_bad_data_file_is_refused_before_anything_is_written(capsys, tiny_llama, data_file, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(data_file.read_text() + "not json\n")
    line = cli_error(capsys, "--model", tiny_llama, "--data", bad, "--out", tmp_path / "out")
    assert "bad.jsonl:13" in line and "not valid JSON" in line and not (tmp_path / "out").exists()


def test_line_with_both_messages_and_prompt_completion_is_refused(capsys, tiny_llama, data_file, tmp_path):
    both = tmp_path / "both.jsonl"
    chat = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    both.write_text(data_file.read_text() + json.dumps({**chat, "prompt": "p", "completion": "c"}) + "\n")
    line = cli_error(capsys, "--model", tiny_llama, "--data", both, "--out", tmp_path / "out")
    assert line == (f"error: {both}:13: has both 'messages' and 'prompt' and 'completion'; a line is either "
                    "a chat or a prompt/completion pair, not both")
    assert not (tmp_path / "out").exists()


def test_output_directory_holding_something_else_is_refused(capsys, tiny_llama, data_file, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    line = cli_error(capsys, "--model", tiny_llama, "--data", data_file, "--out", other)
    assert "holds something other than a training run" in line and "--overwrite" in line
    different = tmp_path / "different"
    different.mkdir()
    (different / "run.json").write_text(json.dumps({"lr": 1.0}))
    line = cli_error(capsys, "--model", tiny_llama, "--data", data_file, "--out", different)
    assert "holds a different run" in line and "--resume" in line
    assert [p.name for p in other.iterdir()] == ["notes.txt"] and [p.name for p in different.iterdir()] == ["run.json"]


def test_output_into_the_base_model_directory_is_refused_even_with_overwrite(capsys, tiny_llama, data_file):
    before = sorted(p.name for p in tiny_llama.iterdir())
    line = cli_error(capsys, "--model", tiny_llama, "--data", data_file, "--out", tiny_llama, "--overwrite")
    assert "is the base model's directory" in line and sorted(p.name for p in tiny_llama.iterdir()) == before


def test_a_real_subprocess_exits_2_with_one_line(tiny_llama, data_file, tmp_path):
    result = run_workbench("sft", "--model", tiny_llama, "--data", data_file, "--out", tmp_path / "out",
                           "--batch-size", "0")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: batch_size must be a positive integer, got 0"


def test_yaml_config_is_overridden_by_command_line_values(tmp_path):
    config_file = tmp_path / "sft.yaml"
    config_file.write_text("model: base\ndata: train.jsonl\nout: run\nlr: 0.001\nlora-rank: 8\n")
    config = config_from_cli(SFTConfig, str(config_file), {"lr": 0.01, "epochs": None})
    assert (config.train.lr, config.lora_rank, config.train.epochs, config.model) == (0.01, 8, 3, "base")
    config_file.write_text("model: base\ndata: train.jsonl\nout: run\nlearning_rate: 0.001\n")
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'"):
        config_from_cli(SFTConfig, str(config_file), {})
