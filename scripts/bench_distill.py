#!/usr/bin/env python
"""Peak memory and time of the chunked distillation loss against the plain full-logits one.

Each (implementation, shape) runs in a fresh process so peak memory is its own: the peak
resident set (VmHWM) during one forward + backward, minus the resident set just before it
(inputs, weights and the imported libraries are excluded). Time is the median of REPEATS
forward + backward passes after one warm-up. Shapes default to SmolLM2-135M's head
(hidden 576, vocab 49152, 4096 supervised tokens) and a Llama-3-sized vocab (128256, with
1024 tokens so that the plain implementation fits in this machine's memory).

    python scripts/bench_distill.py [--case VOCABxTOKENS ...] [--loss reverse_kl] [--chunk-size 512]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
DEFAULT_CASES = ["49152x4096", "128256x1024"]


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(args) -> None:
    import torch

    from workbench.distill.losses import DenseTeacher, LossSpec, distill_loss
    from workbench.distill.reference import plain_distill_loss

    vocab, tokens = map(int, args.worker_case.split("x"))
    spec = LossSpec(args.loss, beta=0.5, temperature=args.temperature, alpha=args.alpha,
                    chunk_size=args.chunk_size)
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, args.hidden, generator=generator).requires_grad_(True)
    weight = (torch.randn(vocab, args.hidden, generator=generator) * 0.05).requires_grad_(True)
    teacher_hidden = torch.randn(tokens, args.hidden, generator=generator)
    teacher_weight = torch.randn(vocab, args.hidden, generator=generator) * 0.05
    labels = torch.randint(0, vocab, (tokens,), generator=generator)

    def step():
        hidden.grad = weight.grad = None
        if args.worker == "plain":
            loss = plain_distill_loss(hidden, weight, teacher_hidden, teacher_weight, labels, spec)
        else:
            loss, _ = distill_loss(hidden, weight, DenseTeacher(teacher_hidden, teacher_weight), labels, spec)
        loss.backward()
        return loss.item()

    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set to the current one
    before = status_kb("VmRSS")
    loss = step()
    peak_mb = (status_kb("VmHWM") - before) / 1024
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    print(json.dumps({"peak_mb": peak_mb, "seconds": statistics.median(times), "loss": loss}))


def run_case(case: str, implementation: str, args) -> dict:
    command = [sys.executable, __file__, "--worker", implementation, "--worker-case", case,
               "--hidden", str(args.hidden), "--loss", args.loss, "--chunk-size", str(args.chunk_size),
               "--temperature", str(args.temperature), "--alpha", str(args.alpha),
               "--repeats", str(args.repeats)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{implementation} {case} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", help="VOCABxTOKENS (repeatable)")
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--loss", default="reverse_kl")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=["plain", "chunked"], help=argparse.SUPPRESS)
    parser.add_argument("--worker-case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(f"loss {args.loss}, temperature {args.temperature}, alpha {args.alpha}, hidden {args.hidden}, "
          f"chunk {args.chunk_size}, forward + backward, median of {args.repeats}")
    print(f"{'vocab':>7} {'tokens':>6} | {'plain MB':>9} {'chunked MB':>10} {'saved':>6} | "
          f"{'plain s':>7} {'chunked s':>9} {'speedup':>7} | {'loss diff':>9}")
    for case in args.case or DEFAULT_CASES:
        vocab, tokens = case.split("x")
        plain = run_case(case, "plain", args)
        chunked = run_case(case, "chunked", args)
        saved = 1 - chunked["peak_mb"] / plain["peak_mb"]
        print(f"{vocab:>7} {tokens:>6} | {plain['peak_mb']:>9.0f} {chunked['peak_mb']:>10.0f} {saved:>6.0%} | "
              f"{plain['seconds']:>7.2f} {chunked['seconds']:>9.2f} {plain['seconds'] / chunked['seconds']:>6.2f}x | "
              f"{abs(plain['loss'] - chunked['loss']) / abs(plain['loss']):>9.1e}", flush=True)


if __name__ == "__main__":
    main()
