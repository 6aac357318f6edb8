#!/usr/bin/env python
"""Data parallelism against FSDP for distillation on 2 CPU processes: peak memory per rank and
tokens per second.

SmolLM2-135M-Instruct (models/smollm2-135m-instruct, fp32) teaches its 10-layer cut (`workbench
student init --num-layers 10`) on recipes/data/chat, launched by torchrun twice with the same
settings, once plain (DDP: every rank holds the whole student, its gradients, its AdamW state
and the whole teacher) and once with --fsdp (each rank holds half of each, gathered layer by
layer). Each rank runs the `workbench distill` command in-process and reports its own peak
resident set (VmHWM) when the command returns; tokens/s is the run's own figure from
events.jsonl (all tokens of all ranks, over the training time, first step included).

    python scripts/bench_fsdp.py [--steps 12] [--batch-size 4] [--max-length 256] [--work DIR]
                                 [--malloc-mmap-threshold 65536]

On CPU the ranks' memory is glibc's heap. By default glibc raises its mmap threshold as large
blocks are freed and then keeps freed memory for reuse, which FSDP's gather-and-free of whole
layers at every step turns into a high peak; so `--fsdp` on CPU sets the threshold to 128 KiB
(``workbench.training.fsdp.return_freed_memory_on_cpu``), and data parallelism keeps glibc's
default: the plain run compares what each gives a user. ``--malloc-mmap-threshold N`` sets
MALLOC_MMAP_THRESHOLD_=N for both runs instead (FSDP then leaves it as it is).

Targets (issue 16): FSDP peak per rank <= 0.6x the data-parallel run's; tokens/s >= 0.7x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
TEACHER = REPO_ROOT / "models" / "smollm2-135m-instruct"
DATA = REPO_ROOT / "recipes" / "data" / "chat" / "train.jsonl"


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def rank_worker(report_dir: str, argv: list[str]) -> None:
    """One torchrun rank: the distill command in this process, then this rank's peak RSS."""
    from workbench.cli import _leave_process_group_and_exit, run_cli

    code = run_cli(argv)
    rank = os.environ.get("RANK", "0")
    Path(report_dir, f"rank-{rank}.json").write_text(json.dumps({"peak_rss_mb": peak_rss_mb(), "code": code}))
    _leave_process_group_and_exit(code)


def run(label: str, student: Path, work: Path, args, fsdp: bool) -> dict:
    out, reports = work / label, work / f"{label}-ranks"
    reports.mkdir(parents=True, exist_ok=True)
    distill = ["distill", "--teacher", str(TEACHER), "--student", str(student), "--data", str(DATA),
               "--out", str(out), "--overwrite", "--no-progress", "--max-steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--val-split", "0",
               "--loss", "forward_kl", "--lr", "1e-4", "--precision", "fp32", *(["--fsdp"] if fsdp else [])]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               __file__, "--rank-worker", str(reports), "--", *distill]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    if args.malloc_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{label} failed:\n{done.stderr[-4000:]}")
    ranks = [json.loads((reports / f"rank-{r}.json").read_text()) for r in (0, 1)]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    return {"peak_rss_mb": max(r["peak_rss_mb"] for r in ranks), "tokens_per_second": events[-1]["tokens_per_second"],
            "final_loss": events[-1]["train_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--work", type=Path, default=None, help="Where the runs go (default: a temp dir).")
    parser.add_argument("--malloc-mmap-threshold", type=int, default=0,
                        help="glibc MALLOC_MMAP_THRESHOLD_ for both runs (0: unset; --fsdp then sets 128 KiB itself).")
    parser.add_argument("--rank-worker", default=None, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.rank_worker:
        rank_worker(args.rank_worker, rest[1:] if rest[:1] == ["--"] else rest)
        return
    if not TEACHER.is_dir():
        sys.exit(f"no teacher at {TEACHER}: run scripts/get-smollm2 first")
    from workbench.distill import init_student

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-fsdp-"))
    student = work / "student-10"
    if not student.is_dir():
        init_student(TEACHER, student, num_layers=10)
    ddp = run("data-parallel", student, work, args, fsdp=False)
    fsdp = run("fsdp", student, work, args, fsdp=True)
    print(f"distill SmolLM2-135M -> 10-layer cut, 2 CPU processes, {args.steps} steps, batch {args.batch_size} "
          f"per rank, max length {args.max_length}, fp32, MALLOC_MMAP_THRESHOLD_="
          f"{args.malloc_mmap_threshold or 'unset'}")
    print(f"{'':16}{'peak RSS/rank MB':>18}{'tokens/s':>10}{'final loss':>12}")
    for label, row in (("data-parallel", ddp), ("fsdp", fsdp)):
        print(f"{label:16}{row['peak_rss_mb']:>18.0f}{row['tokens_per_second']:>10.0f}{row['final_loss']:>12.4f}")
    memory = fsdp["peak_rss_mb"] / ddp["peak_rss_mb"]
    speed = fsdp["tokens_per_second"] / ddp["tokens_per_second"]
    print(f"fsdp / data-parallel: memory {memory:.2f}x (target <= 0.60), tokens/s {speed:.2f}x (target >= 0.70)")


if __name__ == "__main__":
    main()
