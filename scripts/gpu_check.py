#!/usr/bin/env python
"""The GPU check's parts (run through scripts/gpu-check, which sets up Python offline first).

Each part trains or measures on CUDA in bf16 and prints one line: PASS/FAIL, tokens/s, model
FLOPs utilization and peak GPU memory. A part passes when it finishes, its loss is finite and
falls, and (for the loss part) the chunked loss matches the plain one with less memory.

  sft-full  full fine-tuning of SmolLM2-135M, FSDP over every GPU (2 or more), else one GPU
  sft-lora  LoRA (all linear layers) on one GPU
  qlora     LoRA on a 4-bit NF4 base through bitsandbytes, on one GPU, the workbench's loop
  distill   SmolLM2-135M teaching its 10-layer cut, FSDP over every GPU (2 or more), else one GPU
  loss      chunked vs plain distillation loss, forward + backward, at V=49152 and V=128256

MFU = achieved model FLOPs / the GPU's dense bf16 peak, with 6 x parameters FLOPs per trained
token (forward + backward), plus 2 x the teacher's parameters per token for distillation, as
in the PaLM paper's appendix (attention FLOPs left out, so MFU is slightly understated).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
MODEL = REPO_ROOT / "models" / "smollm2-135m-instruct"
DATA = REPO_ROOT / "recipes" / "data" / "chat" / "train.jsonl"
PARTS = ("sft-full", "sft-lora", "qlora", "distill", "loss")
# Dense bf16 tensor-core peak (no sparsity), FLOP/s, by a substring of the device name.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12,
             "L40S": 362e12, "L4": 121e12, "A10": 125e12, "RTX 4090": 165e12}


def peak_flops(device_name: str) -> float | None:
    for key, value in PEAK_BF16.items():
        if key in device_name:
            return value
    return None


def mfu(tokens_per_second: float, flops_per_token: float, world: int, device_name: str) -> float | None:
    """Model FLOPs utilization over ``world`` GPUs of this kind (None for an unknown GPU)."""
    peak = peak_flops(device_name)
    return tokens_per_second * flops_per_token / (peak * world) if peak else None


def result_line(part: str, ok: bool, detail: str, tokens_per_second: float | None = None,
                utilization: float | None = None, peak_gb: float | None = None) -> str:
    figures = []
    if tokens_per_second is not None:
        figures.append(f"{tokens_per_second:,.0f} tok/s")
    if tokens_per_second is not None:
        figures.append(f"MFU {utilization:.1%}" if utilization is not None else "MFU n/a (unknown GPU)")
    if peak_gb is not None:
        figures.append(f"peak {peak_gb:.2f} GB")
    return f"{'PASS' if ok else 'FAIL'}  {part:<9} {'  '.join(figures)}  {detail}".rstrip()


def count_parameters(path: Path) -> int:
    from workbench.checkpoint import Checkpoint

    return Checkpoint(path).num_parameters


def rank_worker(report: str, argv: list[str]) -> None:
    """One torchrun rank: a workbench command in-process, then this rank's peak GPU memory."""
    import torch

    from workbench.cli import _leave_process_group_and_exit, run_cli

    code = run_cli(argv)
    rank = os.environ.get("RANK", "0")
    Path(f"{report}-rank{rank}.json").write_text(json.dumps(
        {"code": code, "peak_gb": torch.cuda.max_memory_allocated() / 2**30}))
    _leave_process_group_and_exit(code)


def launch(command: list[str], out: Path, gpus: int) -> tuple[dict, float]:
    """Run a workbench training command (FSDP over every GPU when there are 2 or more); its
    last event and the highest peak GPU memory of its ranks."""
    fsdp = ["--fsdp"] if gpus >= 2 else []
    report = str(out) + ".report"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus if fsdp else 1}",
            __file__, "--rank-worker", report, "--", *command, "--out", str(out), *fsdp]
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    peaks = [json.loads(Path(p).read_text())["peak_gb"] for p in sorted(Path(out.parent).glob(out.name + ".report-rank*.json"))]
    return {"first": events[0], "last": events[-1]}, max(peaks)


def training_args(steps: int) -> list[str]:
    return ["--data", str(DATA), "--max-steps", str(steps), "--batch-size", "8", "--max-length", "512",
            "--val-split", "0", "--precision", "bf16", "--no-progress", "--overwrite", "--warmup-steps", "2"]


def part_training(part: str, work: Path, gpus: int, device_name: str, steps: int) -> str:
    params = count_parameters(MODEL)
    if part == "sft-full":
        command = ["sft", "--model", str(MODEL), "--lr", "2e-5", *training_args(steps)]
        flops, world = 6 * params, gpus if gpus >= 2 else 1
    elif part == "sft-lora":
        command = ["sft", "--model", str(MODEL), "--lr", "2e-4", "--lora-rank", "16", *training_args(steps)]
        flops, world, gpus = 6 * params, 1, 1  # LoRA trains data-parallel or alone, not under FSDP
    else:
        from workbench.distill import init_student

        student = work / "student-10"
        if not student.is_dir():
            init_student(MODEL, student, num_layers=10)
        command = ["distill", "--teacher", str(MODEL), "--student", str(student), "--teacher-dtype", "bfloat16",
                   "--loss", "forward_kl", "--lr", "1e-4", *training_args(steps)]
        flops, world = 6 * count_parameters(student) + 2 * params, gpus if gpus >= 2 else 1
    events, peak = launch(command, work / part, gpus)
    first, last = events["first"]["train_loss"], events["last"]["train_loss"]
    ok = math.isfinite(last) and last < first
    speed = events["last"]["tokens_per_second"]
    where = f"FSDP over {world} GPUs" if world >= 2 else "1 GPU"
    return result_line(part, ok, f"loss {first:.3f} -> {last:.3f}, {where}", speed,
                       mfu(speed, flops, world, device_name), peak)


def part_qlora(work: Path, device_name: str, steps: int) -> str:
    """LoRA on an NF4 base through the workbench's own loop (the CLI has no 4-bit loading)."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from workbench.data import pad_collate, prepare_datasets
    from workbench.modeling import load_tokenizer
    from workbench.sft.lora import apply_lora
    from workbench.training.config import TrainingConfig
    from workbench.training.distributed import setup
    from workbench.training.loop import train
    from workbench.training.objectives import causal_lm_objective

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(str(MODEL), quantization_config=quantization, device_map={"": 0})
    model = apply_lora(model, 16, 32.0, 0.0, "all-linear")
    tokenizer = load_tokenizer(MODEL)
    rows, _, _ = prepare_datasets(str(DATA), tokenizer, 512, val_split=0)
    config = TrainingConfig(epochs=1, max_steps=steps, batch_size=8, lr=2e-4, warmup_steps=2, max_length=512,
                            precision="bf16", progress=False)
    torch.cuda.reset_peak_memory_stats()
    collate = lambda batch: pad_collate(batch, pad_id=tokenizer.pad_token_id or 0)  # noqa: E731
    train(model, rows, [], collate, config, work / "qlora", setup(), causal_lm_objective)
    events = [json.loads(line) for line in (work / "qlora" / "events.jsonl").read_text().splitlines()]
    first, last, speed = events[0]["train_loss"], events[-1]["train_loss"], events[-1]["tokens_per_second"]
    ok = math.isfinite(last) and last < first
    return result_line("qlora", ok, f"loss {first:.3f} -> {last:.3f}, 4-bit NF4 base, 1 GPU", speed,
                       mfu(speed, 6 * count_parameters(MODEL), 1, device_name),
                       torch.cuda.max_memory_allocated() / 2**30)


def part_loss() -> list[str]:
    """Chunked against plain loss on the GPU: same value, peak memory and time per vocab."""
    import torch

    from workbench.distill.losses import DenseTeacher, LossSpec, distill_loss
    from workbench.distill.reference import plain_distill_loss

    lines = []
    for vocab, tokens, hidden in ((49152, 8192, 576), (128256, 8192, 2048)):
        generator = torch.Generator(device="cuda").manual_seed(0)
        make = lambda *shape, scale=1.0: torch.randn(*shape, generator=generator, device="cuda") * scale  # noqa: E731
        h = make(tokens, hidden).bfloat16().requires_grad_(True)
        w = make(vocab, hidden, scale=0.02).bfloat16().requires_grad_(True)
        th, tw = make(tokens, hidden).bfloat16(), make(vocab, hidden, scale=0.02).bfloat16()
        labels = torch.randint(0, vocab, (tokens,), generator=generator, device="cuda")
        spec = LossSpec("reverse_kl")
        measured = {}
        for name in ("plain", "chunked"):
            h.grad = w.grad = None
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            started = time.perf_counter()
            if name == "plain":
                loss = plain_distill_loss(h, w, th, tw, labels, spec)
            else:
                loss, _ = distill_loss(h, w, DenseTeacher(th, tw), labels, spec)
            loss.backward()
            torch.cuda.synchronize()
            measured[name] = (loss.item(), (torch.cuda.max_memory_allocated() - base) / 2**30,
                              time.perf_counter() - started)
        (plain, plain_gb, plain_s), (chunked, chunked_gb, chunked_s) = measured["plain"], measured["chunked"]
        close = abs(plain - chunked) <= 2e-2 * abs(plain)
        ok = close and chunked_gb < plain_gb
        lines.append(result_line(f"loss V={vocab}", ok, f"{tokens} tokens: chunked {chunked_gb:.2f} GB / "
                                 f"{chunked_s * 1000:.0f} ms vs plain {plain_gb:.2f} GB / {plain_s * 1000:.0f} ms, "
                                 f"loss diff {abs(plain - chunked) / abs(plain):.1e}"))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {', '.join(PARTS)}")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per training part")
    parser.add_argument("--work", type=Path, default=None, help="where the runs go (default: a temp dir)")
    parser.add_argument("--rank-worker", default=None, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.rank_worker:
        rank_worker(args.rank_worker, rest[1:] if rest[:1] == ["--"] else rest)
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device visible (torch.cuda.is_available() is False); this check needs an NVIDIA GPU",
              file=sys.stderr)
        return 2
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        print(f"gpu-check: unknown part {unknown[0]!r}; parts: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    if not MODEL.is_dir():
        print(f"gpu-check: no model at {MODEL} (copy SmolLM2-135M-Instruct there)", file=sys.stderr)
        return 2
    gpus, device_name = torch.cuda.device_count(), torch.cuda.get_device_name(0)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    print(f"gpu-check: {gpus} x {device_name}, torch {torch.__version__}, work dir {work}", flush=True)
    failed = 0
    started = time.perf_counter()
    for part in parts:
        try:
            if part == "loss":
                lines = part_loss()
            elif part == "qlora":
                lines = [part_qlora(work, device_name, args.steps)]
            else:
                lines = [part_training(part, work, gpus, device_name, args.steps)]
        except Exception as exc:  # a part that breaks is a FAIL line, and the others still run
            lines = [result_line(part, False, f"{type(exc).__name__}: {exc}".splitlines()[0])]
        for line in lines:
            failed += line.startswith("FAIL")
            print(line, flush=True)
    print(f"gpu-check: {'FAIL' if failed else 'PASS'} ({failed} failed) in {time.perf_counter() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
