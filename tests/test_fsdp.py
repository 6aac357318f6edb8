"""`--fsdp` under torchrun on CPU (gloo): the sharded runs train the same weights as data
parallelism and one process, resume exactly after kill -9, shard the distillation teacher,
run as two "nodes" on localhost; bad launches and options are refused before anything is written.

Each torchrun launch costs seconds on two cores, so the launches are few and shared: one
uninterrupted FSDP SFT run is the reference for the comparison, the kill -9 and the two-node tests.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.chat_runs import write_reversals
from tests.cli_helpers import REPO_ROOT, run_workbench
from workbench.distill import DistillConfig, init_student
from workbench.distill import run as distill_run
from workbench.errors import ConfigError
from workbench.sft import SFTConfig
from workbench.sft import run as sft_run
from workbench.training.fields import config_from_dict

TORCHRUN = (sys.executable, "-m", "torch.distributed.run")
STEPS = 6  # 22 training rows (2 held out), 2 ranks x batch 2 -> 6 steps per epoch


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_reversals(tmp_path_factory.mktemp("fsdp-data") / "train.jsonl", 24)


def sft_settings(model, data, out, **overrides) -> dict:
    values = dict(model=str(model), data=str(data), out=str(out), epochs=1, batch_size=2, lr=3e-3,
                  warmup_steps=2, max_length=64, save_every=1, progress=False)
    values.update(overrides)
    return values


def cli_args(settings: dict) -> list[str]:
    args = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else f"--no-{flag[2:]}")
        else:
            args += [flag, str(value)]
    return args


def torchrun(command: str, settings: dict, *launch: str, wait: bool = True):
    """`torchrun --standalone --nproc_per_node=2 -m workbench COMMAND ...` (or other launch flags)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    argv = [*TORCHRUN, *(launch or ("--standalone", "--nproc_per_node=2")), "-m", "workbench", command,
            *cli_args(settings)]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    if not wait:
        return process
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    return stderr


def losses(out) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (out / "events.jsonl").read_text().splitlines()]


def weights(out) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def assert_same_training(out, reference, loss_tol=1e-5, weight_tol=1e-4):
    got, expected = losses(out), losses(reference)
    assert len(got) == len(expected) == STEPS
    assert got == pytest.approx(expected, abs=loss_tol)
    a, b = weights(out), weights(reference)
    assert a.keys() == b.keys()
    for name in b:
        torch.testing.assert_close(a[name], b[name], atol=weight_tol, rtol=0, msg=name)


@pytest.fixture(scope="module")
def fsdp_sft(tiny_llama, data, tmp_path_factory):
    """An uninterrupted FSDP SFT run on 2 processes, checkpointing every step."""
    out = tmp_path_factory.mktemp("fsdp-sft") / "fsdp"
    stderr = torchrun("sft", sft_settings(tiny_llama, data, out, fsdp=True))
    assert "terminate called" not in stderr
    return out


def test_sft_fsdp_trains_like_data_parallel_and_one_process(fsdp_sft, tiny_llama, data, tmp_path):
    torchrun("sft", sft_settings(tiny_llama, data, tmp_path / "ddp"))
    sft_run(config_from_dict(SFTConfig, sft_settings(tiny_llama, data, tmp_path / "one", grad_accum=2)))
    assert_same_training(fsdp_sft, tmp_path / "one")
    assert_same_training(tmp_path / "ddp", tmp_path / "one")
    base = load_file(str(tiny_llama / "model.safetensors"))
    assert any(not torch.equal(base[name], value) for name, value in weights(fsdp_sft).items())
    checkpoint = fsdp_sft / "checkpoints" / f"step-{STEPS:07d}"
    assert (checkpoint / "sharded" / ".metadata").exists() and not (checkpoint / "trainable.safetensors").exists()
    assert {p.name for p in checkpoint.glob("rng-rank*.pt")} == {"rng-rank0.pt", "rng-rank1.pt"}


def assert_kill_9_then_rerun_gives_the_uninterrupted_run(command: str, settings: dict, straight):
    """Kill torchrun and its ranks after a random checkpoint, run the same command again: the
    weights and losses are bitwise those of the uninterrupted run in STRAIGHT."""
    kill_after = random.Random().randint(1, STEPS - 2)
    out = Path(settings["out"])
    process = torchrun(command, settings, wait=False)
    deadline = time.time() + 240
    while not (out / "checkpoints" / f"step-{kill_after:07d}").exists():
        assert process.poll() is None and time.time() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # torchrun and both ranks, mid-step
    process.wait()

    torchrun(command, settings)  # the same command again continues from the last whole checkpoint
    resumed, uninterrupted = weights(out), weights(straight)
    assert resumed.keys() == uninterrupted.keys()
    for name in uninterrupted:
        assert torch.equal(resumed[name], uninterrupted[name]), f"{name} differs after resuming at step {kill_after}"
    assert losses(out) == losses(straight)


def test_kill_9_under_fsdp_then_rerun_gives_bitwise_the_uninterrupted_weights(fsdp_sft, tiny_llama, data,
                                                                               tmp_path):
    assert_kill_9_then_rerun_gives_the_uninterrupted_run(
        "sft", sft_settings(tiny_llama, data, tmp_path / "killed", fsdp=True), fsdp_sft)


def test_lora_under_fsdp_trains_like_one_process_and_writes_adapter_and_merged_model(tiny_llama, data, tmp_path):
    lora = dict(lora_rank=4, lora_targets="q_proj,v_proj", lr=2e-2, save_every=0)
    torchrun("sft", sft_settings(tiny_llama, data, tmp_path / "fsdp", fsdp=True, **lora))
    sft_run(config_from_dict(SFTConfig, sft_settings(tiny_llama, data, tmp_path / "one", grad_accum=2, **lora)))
    assert_same_training(tmp_path / "fsdp", tmp_path / "one")
    adapter = load_file(str(tmp_path / "fsdp" / "adapter" / "adapter_model.safetensors"))
    expected = load_file(str(tmp_path / "one" / "adapter" / "adapter_model.safetensors"))
    assert adapter.keys() == expected.keys() and any("lora_B" in name for name in adapter)
    for name in expected:
        torch.testing.assert_close(adapter[name], expected[name], atol=1e-4, rtol=0, msg=name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_localhost_train_what_one_node_does(fsdp_sft, tiny_llama, data, tmp_path):
    settings = sft_settings(tiny_llama, data, tmp_path / "nodes", fsdp=True)
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [torchrun("sft", settings, "--nnodes=2", "--nproc_per_node=1", f"--node-rank={rank}",
                      "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", "--rdzv-id=fsdp-test", wait=False)
             for rank in (0, 1)]
    for node in nodes:
        _, stderr = node.communicate(timeout=300)
        assert node.returncode == 0, stderr[-3000:]
    got, expected = weights(tmp_path / "nodes"), weights(fsdp_sft)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


@pytest.fixture(scope="module", params=["tied", "untied"])
def distill_setup(request, tmp_path_factory, data):
    """A teacher and its 2-layer cut, with the lm_head tied to the input embedding or not."""
    from tests.tiny_models import make_checkpoint

    root = tmp_path_factory.mktemp("fsdp-distill")
    teacher = make_checkpoint(root / "teacher", arch="llama", layers=3, hidden=48, seed=1,
                              tie=request.param == "tied")
    student = init_student(teacher, root / "student", num_layers=2).path
    # 5 rows over 2 ranks in batches of 2: rank 1 runs one pass fewer of its own
    val = write_reversals(root / "val.jsonl", 5, offset=100)
    return {"teacher": teacher, "student": student, "data": data, "val": val}


def distill_settings(setup, out, **overrides) -> dict:
    values = dict(teacher=str(setup["teacher"]), student=str(setup["student"]), data=str(setup["data"]),
                  val_data=str(setup["val"]), out=str(out), epochs=1, batch_size=2, lr=1e-2, max_length=64, chunk_size=7,
                  loss="forward_kl", alpha=0.5, save_every=1, progress=False)
    values.update(overrides)
    return values


@pytest.fixture(scope="module")
def fsdp_distill(distill_setup, tmp_path_factory):
    """An uninterrupted FSDP distillation on 2 processes, checkpointing every step."""
    out = tmp_path_factory.mktemp("fsdp-distill-run") / "fsdp"
    torchrun("distill", distill_settings(distill_setup, out, fsdp=True))
    return out


@pytest.mark.filterwarnings("ignore:.*fewer than 10")
def test_distill_fsdp_trains_like_data_parallel_and_one_process(distill_setup, fsdp_distill, tmp_path):
    torchrun("distill", distill_settings(distill_setup, tmp_path / "ddp"))
    distill_run(config_from_dict(DistillConfig, distill_settings(distill_setup, tmp_path / "one", grad_accum=2)))
    assert_same_training(fsdp_distill, tmp_path / "one")
    assert_same_training(tmp_path / "ddp", tmp_path / "one")
    student = load_file(str(distill_setup["student"] / "model.safetensors"))
    assert any(not torch.equal(student[name], value) for name, value in weights(fsdp_distill).items())
    events = [json.loads(line) for line in (fsdp_distill / "events.jsonl").read_text().splitlines()]
    one = [json.loads(line) for line in (tmp_path / "one" / "events.jsonl").read_text().splitlines()]
    for key in ("valid_loss", "valid_kd_loss", "valid_student_ce", "valid_teacher_agreement"):
        assert events[-1][key] == pytest.approx(one[-1][key], abs=1e-5), key


def test_kill_9_under_fsdp_distillation_then_rerun_gives_bitwise_the_uninterrupted_weights(
        distill_setup, fsdp_distill, tmp_path):
    assert_kill_9_then_rerun_gives_the_uninterrupted_run(
        "distill", distill_settings(distill_setup, tmp_path / "killed", fsdp=True), fsdp_distill)


def test_each_rank_holds_half_of_the_sharded_teacher_and_its_vocab_rows_during_the_loss(distill_setup, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    worker = REPO_ROOT / "tests" / "fsdp_teacher_worker.py"
    done = subprocess.run([*TORCHRUN, "--standalone", "--nproc_per_node=2", str(worker),
                           str(distill_setup["teacher"]), str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    total = reports[0]["total"]
    for report in reports:
        # dim-0 shards: each rank holds half of every tensor, rounded up to whole rows
        assert 0.45 * total <= report["resident_before"] <= 0.55 * total
        assert report["resident_after"] == report["resident_before"]  # re-sharded after the loss
        # during the loss only the root's final norm is whole: the embedding and lm_head stay shards
        assert report["resident_before"] < report["resident_gathered"] <= report["resident_before"] + report["hidden_size"]
        assert report["hidden_max_diff"] < 1e-5 and report["weight_rows_equal"]
        assert report["head_is_embedding"] == report["tied"]  # sharding keeps a tied head tied
    assert reports[0]["resident_before"] + reports[1]["resident_before"] >= total


def test_fsdp_in_one_process_is_refused_in_one_line_and_writes_nothing(tiny_llama, data, tmp_path):
    done = run_workbench("sft", *cli_args(sft_settings(tiny_llama, data, tmp_path / "out", fsdp=True)))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "--fsdp shards the model over torchrun's processes, and this is one process" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("config, message", [
    (config_from_dict(DistillConfig, dict(teacher="t", student="s", data="d", out="o", fsdp=True, on_policy=0.5)),
     "on_policy sampling is not supported with fsdp"),
    (config_from_dict(DistillConfig, dict(teacher="t", student="s", data="d", out="o", fsdp=True,
                                          teacher_device="cpu")),
     "fsdp shards the teacher over the same devices"),
])
def test_fsdp_with_an_option_it_cannot_honour_is_refused(config, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.validate()


def test_resuming_with_another_world_size_names_both_and_touches_nothing(fsdp_sft, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(fsdp_sft, out)
    before = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*")}
    recorded = json.loads((out / "run.json").read_text())
    settings = {key: recorded[key] for key in ("model", "data", "batch_size", "lr", "max_length")}
    longer = config_from_dict(SFTConfig, {**settings, "out": str(out), "epochs": 2, "resume": True,
                                          "progress": False})
    with pytest.raises(ConfigError, match=f"step-{STEPS:07d}: was written by 2 processes and this run has 1; "
                                          "resume with 2"):
        sft_run(longer)
    assert {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*")} == before


@pytest.mark.parametrize("precision, param_dtype", [("bf16", torch.bfloat16), ("auto", None), ("fp32", None)])
def test_mixed_precision_on_cpu_is_fp32_unless_bf16_is_asked_for(precision, param_dtype):
    from workbench.training.fsdp import mixed_precision

    policy = mixed_precision(precision, torch.device("cpu"))
    assert policy.param_dtype == param_dtype
    assert policy.reduce_dtype == (torch.float32 if param_dtype else None)


FRAGMENTING = """
import sys, torch
from pathlib import Path
from workbench.training.fsdp import return_freed_memory_on_cpu
def rss_mb():
    return next(int(l.split()[1]) // 1024 for l in Path("/proc/self/status").read_text().splitlines()
                if l.startswith("VmRSS:"))
mode, block_kib = sys.argv[1], int(sys.argv[2])
if mode == "fsdp":
    assert return_freed_memory_on_cpu()
x = torch.empty(8 << 20, dtype=torch.uint8); del x  # glibc's dynamic threshold rises to 8 MB
base, kept, freed = rss_mb(), [], []
for _ in range((240 << 10) // block_kib):  # 240 MB of blocks freed later, between small blocks that stay
    freed.append(torch.ones(block_kib << 10, dtype=torch.uint8))
    kept.append(torch.ones(64 << 10, dtype=torch.uint8))
del freed
print(rss_mb() - base)
"""


@pytest.mark.parametrize("block_kib", [4096, 512])  # a layer's gathered weights; a short batch's activation
def test_fsdp_on_cpu_returns_freed_blocks_to_the_system(block_kib):
    def retained_mb(mode):
        done = subprocess.run([sys.executable, "-c", FRAGMENTING, mode, str(block_kib)], capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=120)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.strip())

    assert retained_mb("default") > 150  # glibc keeps most of the 240 MB freed
    assert retained_mb("fsdp") < 50
