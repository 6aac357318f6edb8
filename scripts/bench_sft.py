#!/usr/bin/env python
"""Throughput and peak memory of `workbench sft` against TRL's SFTTrainer, and packed vs padded.

Every run is a fresh subprocess (peak RSS from os.wait4), runs alternate between the two
systems, and both train the same model on the same conversations with the same settings:
fp32, AdamW, lr, warmup, cosine schedule, batch size, max length, grad clipping, no gradient
checkpointing (TRL's default turns it on; it is turned off here so both do the same work),
loss on the assistant answer only (TRL: conversational prompt/completion).

tokens/s = non-padding tokens trained / seconds inside optimizer steps, the same definition for
both (workbench: events.jsonl; TRL: a callback timing steps and `num_input_tokens_seen`).
Model loading and process start are excluded. "final loss" is the mean train loss of the last
5 steps. Children run with OMP_NUM_THREADS=1 (both systems alike): on a shared, oversubscribed
CPU, multi-threaded timings swing by several x between identical runs.

    python scripts/bench_sft.py                         # tiny model + SmolLM2-135M
    python scripts/bench_sft.py --smollm ''             # tiny model only
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SMOLLM = str(REPO / "models" / "smollm2-135m-instruct")  # scripts/get-smollm2 puts it there
WORDS = ("the quick brown fox jumps over the lazy dog what is two plus four capital of france is paris "
         "translate hello to french bonjour reverse the word stone enots").split()


def write_data(path: Path, count: int, min_words: int, max_words: int, seed: int) -> None:
    """Chat examples whose answers have log-uniformly distributed lengths in [min, max] words."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(count):
            words = round(min_words * (max_words / min_words) ** rng.random())
            answer = " ".join(rng.choice(WORDS) for _ in range(words))
            question = f"question {i}: repeat some words"
            f.write(json.dumps({"messages": [{"role": "user", "content": question},
                                             {"role": "assistant", "content": answer}]}) + "\n")


def run_measured(command: list[str]) -> tuple[float, int]:
    """Run a command; return (wall seconds, peak RSS in MiB) of that child alone."""
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.exit(f"failed: {' '.join(command)}\n{stderr.decode()[-3000:]}")
    return time.perf_counter() - started, usage.ru_maxrss // 1024


def workbench_run(model: str, data: Path, out: Path, settings: dict, packing: bool) -> dict:
    command = [sys.executable, "-m", "workbench", "sft", "--model", model, "--data", str(data),
               "--out", str(out), "--overwrite", "--no-progress", "--val-split", "0",
               "--epochs", "1000", "--max-steps", str(settings["steps"]),
               "--batch-size", str(settings["batch_size"]), "--lr", str(settings["lr"]),
               "--warmup-steps", "2", "--schedule", "cosine", "--max-length", str(settings["max_length"]),
               "--precision", "fp32", "--seed", "0", *(["--packing"] if packing else [])]
    wall, rss = run_measured(command)
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    return {"tokens_per_second": events[-1]["tokens_per_second"], "peak_rss_mib": rss, "wall_s": wall,
            "final_loss": statistics.mean(e["train_loss"] for e in events[-5:])}


def trl_run(model: str, data: Path, out: Path, settings: dict) -> dict:
    result_file = out / "result.json"
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, __file__, "--trl-child", json.dumps(
        {"model": model, "data": str(data), "out": str(out), **settings})]
    wall, rss = run_measured(command)
    return {**json.loads(result_file.read_text()), "peak_rss_mib": rss, "wall_s": wall}


def trl_child(spec: dict) -> None:
    """Inside the TRL subprocess: train and write tokens/s and final loss."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(line) for line in open(spec["data"])]
    dataset = Dataset.from_list([{"prompt": r["messages"][:1], "completion": r["messages"][1:]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)

    class StepTimer(TrainerCallback):
        seconds = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            StepTimer.seconds += time.perf_counter() - self.started

    config = SFTConfig(
        output_dir=spec["out"], max_steps=spec["steps"], per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1, learning_rate=spec["lr"], warmup_steps=2, lr_scheduler_type="cosine",
        weight_decay=0.0, max_grad_norm=1.0, max_length=spec["max_length"], seed=0, use_cpu=True,
        bf16=False, gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to="none",
        disable_tqdm=True, include_num_input_tokens_seen="non_padding", completion_only_loss=True,
        packing=False, dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[StepTimer()])
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    result = {"tokens_per_second": trainer.state.num_input_tokens_seen / StepTimer.seconds,
              "final_loss": statistics.mean(losses[-5:])}
    (Path(spec["out"]) / "result.json").write_text(json.dumps(result))


def row(name: str, model: str, result: dict) -> str:
    return (f"| {name} | {model} | {result['tokens_per_second']:.0f} | {result['peak_rss_mib']} | "
            f"{result['final_loss']:.3f} | {result['wall_s']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smollm", default=DEFAULT_SMOLLM, help="SmolLM2-135M checkpoint ('' to skip).")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--smollm-steps", type=int, default=10)
    parser.add_argument("--work", default=None, help="Working directory (default: a temporary one).")
    parser.add_argument("--trl-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_child:
        trl_child(json.loads(args.trl_child))
        return

    if importlib.util.find_spec("trl") is None:
        sys.exit("bench_sft compares with TRL, which is not installed: .venv/bin/pip install -e '.[bench]'")
    sys.path.insert(0, str(REPO))
    from workbench.model_import import build_tiny

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-sft-"))
    work.mkdir(parents=True, exist_ok=True)
    tiny = work / "tiny-llama"
    if not tiny.exists():
        build_tiny(tiny, {"arch": "llama", "layers": 4, "hidden": 128, "vocab_size": 384})
    models = [("tiny llama (4x128)", str(tiny), args.steps)]
    if args.smollm and Path(args.smollm).exists():
        models.append(("SmolLM2-135M", args.smollm, args.smollm_steps))
    data = work / "chat.jsonl"
    write_data(data, count=400, min_words=4, max_words=128, seed=0)

    lines = ["| run | model | tokens/s | peak RSS MiB | final loss | wall s |", "|---|---|---|---|---|---|"]
    for label, model, steps in models:
        settings = {"steps": steps, "batch_size": 8 if label.startswith("tiny") else 4, "lr": 1e-4,
                    "max_length": 512}
        # Alternate which system goes first so neither always runs on a warmer machine.
        order = ("workbench", "trl") if label.startswith("tiny") else ("trl", "workbench")
        results = {}
        for system in order:
            if system == "workbench":
                results[system] = workbench_run(model, data, work / f"wb-{steps}", settings, packing=False)
            else:
                results[system] = trl_run(model, data, work / f"trl-{steps}", settings)
        padded = results["workbench"]
        packed = workbench_run(model, data, work / f"wb-packed-{steps}",
                               {**settings, "batch_size": settings["batch_size"] // 2}, packing=True)
        lines += [row("workbench sft (padded)", label, padded), row("TRL SFTTrainer (padded)", label, results["trl"]),
                  row("workbench sft --packing (rows of 512)", label, packed)]
        lines.append(f"| ratios | {label} | workbench/TRL {padded['tokens_per_second'] / results['trl']['tokens_per_second']:.2f}x, "
                     f"packed/padded {packed['tokens_per_second'] / padded['tokens_per_second']:.2f}x | | | |")
        print("\n".join(lines[-4:]), flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
