"""Training runs whose writes were killed, or whose files were damaged, are finished or
repaired by the next run; a learning rate that blows up stops the CLI with one line."""

from __future__ import annotations

import json

import pytest

from tests.cli_helpers import run_workbench
from tests.test_atomic import run_killed, user_folder
from tests.test_training import VOCAB, config, make_rows, pad
from tests.tiny_models import make_model
from workbench.checkpoint import Checkpoint
from workbench.training.loop import train
from workbench.training.objectives import causal_lm_objective
from workbench.training.distributed import Dist


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("interrupted") / "train.jsonl"
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": f"{i} {i}"}]}) + "\n"
        for i in range(12)))
    return path


def sft_args(model, data, out, *extra) -> list[str]:
    return ["sft", "--model", str(model), "--data", str(data), "--out", str(out), "--epochs", "1",
            "--batch-size", "4", "--max-length", "64", "--no-progress", *map(str, extra)]


def test_sft_killed_during_its_final_save_is_finished_by_the_next_run(tmp_path, tiny_llama, chat_file):
    out = tmp_path / "out"
    run_killed(f"""
        from workbench.cli import main
        main({sft_args(tiny_llama, chat_file, out)!r})
    """, "workbench.atomic.move_files_into")
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".out.wb-staging-")]
    assert leftovers and (leftovers[0] / "config.json").exists()  # a whole model copy beside OUT
    assert not (out / "config.json").exists()
    result = run_workbench(*sft_args(tiny_llama, chat_file, out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert Checkpoint(out).fingerprint()


def test_empty_best_json_is_rewritten_by_the_next_save(tmp_path):
    rows = make_rows(8)
    train(make_model("llama", vocab_size=VOCAB), rows[:6], rows[6:], pad, config(batch_size=2, epochs=2,
          max_steps=2, save_every=1), tmp_path, Dist(), causal_lm_objective)
    best = tmp_path / "checkpoints" / "best.json"
    assert json.loads(best.read_text())["step"] in (1, 2)
    best.write_text("")  # as a kill or a full disk used to leave it
    result = train(make_model("llama", vocab_size=VOCAB), rows[:6], rows[6:], pad,
                   config(batch_size=2, epochs=2, max_steps=4, save_every=1), tmp_path, Dist(), causal_lm_objective)
    recorded = json.loads(best.read_text())
    assert recorded["step"] == result.state.best_step
    assert (tmp_path / "checkpoints" / recorded["checkpoint"]).is_dir()


def test_huge_learning_rate_stops_the_cli_with_one_line(tmp_path, tiny_llama, chat_file):
    out = tmp_path / "out"
    result = run_workbench(*sft_args(tiny_llama, chat_file, out, "--lr", "1e10", "--save-every", "1"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: loss became nan at step 2")
    assert not list((out / "checkpoints").glob("step-*"))  # the weights that gave NaN are not resumable


def test_sft_overwrite_refuses_a_user_folder(tmp_path, tiny_llama, chat_file):
    folder = user_folder(tmp_path / "mine")
    result = run_workbench(*sft_args(tiny_llama, chat_file, folder, "--overwrite"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "holds something other than a training run or a checkpoint this tool wrote" in result.stderr
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
