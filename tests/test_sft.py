"""The SFT engine end to end on tiny checkpoints: resume after kill -9, LoRA output, torchrun."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.chat_runs import write_reversals
from tests.cli_helpers import REPO_ROOT
from workbench.sft import SFTConfig, run
from workbench.training.fields import config_from_dict, flat_fields


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory):
    return write_reversals(tmp_path_factory.mktemp("sft-data") / "train.jsonl", 24)


def sft_args(model, data, out, *extra) -> list[str]:
    return ["--model", str(model), "--data", str(data), "--out", str(out), "--epochs", "2",
            "--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "2", "--max-length", "64",
            "--no-progress", *extra]


FIELD_TYPES = {flat.name: flat.type for flat in flat_fields(SFTConfig)}


def config_from_args(args: list[str]) -> SFTConfig:
    values = {}
    it = iter(args)
    for flag in it:
        key = flag[2:].replace("-", "_")
        if key == "no_progress":
            values["progress"] = False
            continue
        field_type = FIELD_TYPES[key]
        raw = next(it)
        values[key] = field_type(raw) if field_type in (int, float) else raw
    return config_from_dict(SFTConfig, values)


def workbench_process(*args, launcher=(sys.executable, "-m", "workbench")) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([*launcher, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def steps_logged(out) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "events.jsonl").read_text().splitlines()]


def test_kill_9_then_rerun_resumes_to_bitwise_identical_weights(tiny_llama, chat_data, tmp_path):
    args = sft_args(tiny_llama, chat_data, tmp_path / "killed", "--save-every", "1")
    total_steps = 12  # 22 training examples (2 held out), batch 4 -> 6 steps per epoch, 2 epochs
    kill_after = random.Random().randint(2, total_steps - 2)
    process = workbench_process("sft", *args)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while not (checkpoints / f"step-{kill_after:07d}").exists():
        assert process.poll() is None and time.time() < deadline, process.communicate()[1]
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()

    resumed = run(config_from_args(args))  # the same command again continues from the last checkpoint
    reference = run(config_from_args(sft_args(tiny_llama, chat_data, tmp_path / "straight", "--save-every", "1")))

    got = load_file(str(resumed.path / "model.safetensors"))
    expected = load_file(str(reference.path / "model.safetensors"))
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), f"{name} differs after resuming at step {kill_after}"
    assert steps_logged(tmp_path / "killed") == list(range(1, total_steps + 1))
    assert len(list(checkpoints.glob("step-*"))) <= 4 and not list(checkpoints.glob(".*tmp"))

    finished = (tmp_path / "killed" / "model.safetensors").stat().st_mtime_ns
    assert run(config_from_args(args)).path == resumed.path  # once finished, the same command returns it
    assert (tmp_path / "killed" / "model.safetensors").stat().st_mtime_ns == finished
    assert steps_logged(tmp_path / "killed") == list(range(1, total_steps + 1))


def test_lora_writes_merged_checkpoint_equal_to_base_plus_adapter(tiny_llama, chat_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    checkpoint = run(config_from_args(sft_args(tiny_llama, chat_data, out, "--lora-rank", "4",
                                               "--lora-targets", "q_proj,v_proj", "--lr", "2e-2")))
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_llama)),
                                             str(out / "adapter"))
    ids = torch.randint(0, merged.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits
        adapter_logits = with_adapter(input_ids=ids).logits
        base_logits = base(input_ids=ids).logits
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-5, rtol=1e-5)
    assert (merged_logits - base_logits).abs().max() > 1e-3  # the adapter learned something
    lineage = checkpoint.lineage
    assert lineage["kind"] == "sft" and lineage["parameters"]["lora_rank"] == 4
    assert lineage["inputs"]["base"]["fingerprint"] and lineage["inputs"]["data"]["fingerprint"]
    assert {"train_loss", "valid_loss", "valid_mean_token_accuracy"} <= set(lineage["metrics"])
    assert (out / "loss.png").stat().st_size > 0


def test_torchrun_two_processes_follow_the_single_process_loss_curve(tiny_llama, chat_data, tmp_path):
    args = sft_args(tiny_llama, chat_data, tmp_path / "two", "--batch-size", "2")
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "workbench")
    process = workbench_process("sft", *args, launcher=launcher)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, stderr[-3000:]
    run(config_from_args(sft_args(tiny_llama, chat_data, tmp_path / "one", "--batch-size", "2", "--grad-accum", "2")))

    def curve(out):
        events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
        return [(e["train_loss"], e.get("valid_loss")) for e in events]

    one, two = curve(tmp_path / "one"), curve(tmp_path / "two")
    assert len(one) == len(two) == 12
    for (train_one, valid_one), (train_two, valid_two) in zip(one, two):
        assert train_two == pytest.approx(train_one, rel=1e-4)
        assert (valid_one is None) == (valid_two is None)
        if valid_one is not None:
            assert valid_two == pytest.approx(valid_one, rel=1e-4)


def test_resume_continues_a_finished_run_with_more_epochs(tiny_llama, chat_data, tmp_path):
    out = tmp_path / "run"
    run(config_from_args(sft_args(tiny_llama, chat_data, out, "--epochs", "1")))
    assert steps_logged(out) == list(range(1, 7))
    longer = config_from_args(sft_args(tiny_llama, chat_data, out, "--epochs", "2"))
    longer.train.resume = True
    checkpoint = run(longer)
    assert steps_logged(out) == list(range(1, 13))
    assert checkpoint.lineage["parameters"]["epochs"] == 2 and checkpoint.lineage["metrics"]["step"] == 12
    assert json.loads((out / "run.json").read_text())["epochs"] == 2
