#!/usr/bin/env python
"""Real result across tokenizers: a student with its own, smaller tokenizer, distilled from
SmolLM2-135M-Instruct with `--cross-tokenizer uld` and `--cross-tokenizer align`, against the
same student trained by cross-entropy on the teacher's sampled answers alone (the chat set).

One command makes the student (scripts/make_cross_student.py: a byte-level BPE trained on the
shipped training data plus the teacher's own samples, then `student init --tokenizer` from a
10-layer cut) unless WORK/student exists, trains the three variants with each seed (same data,
batch, learning rate, steps and seed across variants), and evaluates every student, the untrained
cut and the teacher on the held-out chat answers (recipes/data/chat/valid.jsonl, all 64):
bits per byte of the reference answers (the teacher's samples; tokenizer-independent), and
agreement with the teacher's greedy answers (exact, and the mean number of leading characters
the two greedy answers share). Prints a markdown table:

    OMP_WAIT_POLICY=PASSIVE python scripts/cross_tokenizer_vs_ce.py --work /tmp/xtok
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
CHAT = REPO / "recipes" / "data" / "chat"
# align: forward KL (from a fresh cut pure reverse KL hardly moves: docs/distill.md) with half
# the weight on the labels; uld: the paper's CE + 1.5 ULD (alpha is not a uld setting).
VARIANTS = {
    "ce": {"kind": "sft"},
    "uld": {"kind": "distill", "cross_tokenizer": "uld"},
    "align": {"kind": "distill", "cross_tokenizer": "align", "loss": "forward_kl", "alpha": 0.5},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="directory for the student, the runs and the report")
    parser.add_argument("--teacher", default=str(REPO / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run (40 = one epoch at batch 8)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--max-length", type=int, default=192, help="tokens per training example")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="greedy answer length for agreement")
    args = parser.parse_args()

    from make_cross_student import make_student

    from workbench import distill, sft
    from workbench.training.fields import config_from_dict

    work = Path(args.work)
    student = work / "student"
    if not (student / "config.json").exists():
        print(make_student(work, args.teacher), flush=True)
    common = dict(data=str(CHAT / "train.jsonl"), batch_size=8, max_length=args.max_length, max_steps=args.steps,
                  lr=args.lr, val_split=0.0, progress=False, overwrite=True)
    trained: dict[str, str] = {}
    for seed in args.seeds:
        for name, variant in VARIANTS.items():
            settings = dict(variant)
            kind = settings.pop("kind")
            out = str(work / f"{name}-seed{seed}")
            started = time.perf_counter()
            if kind == "sft":
                config = config_from_dict(sft.SFTConfig, {"model": str(student), "out": out, "seed": seed, **common})
                sft.run(config)
            else:
                config = config_from_dict(distill.DistillConfig, {"teacher": args.teacher, "student": str(student),
                                                                  "out": out, "seed": seed, **common, **settings})
                distill.run(config)
            trained[f"{name} seed {seed}"] = out
            print(f"{name} seed {seed}: trained in {time.perf_counter() - started:.0f}s", flush=True)
    models = {"the cut, untrained": str(student), **trained, "teacher": args.teacher}
    rows = evaluate(models, args.teacher, args.max_new_tokens)
    (work / "report.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows, args))


def evaluate(models: dict[str, str], teacher: str, max_new_tokens: int) -> dict[str, dict]:
    """Bits per byte of the held-out answers, and agreement of greedy answers with the teacher's."""
    from workbench.data import load_conversations
    from workbench.evaluate import EvalConfig
    from workbench.evaluate import run as run_eval
    from workbench.evaluate.answers import greedy_answers, prompt_of
    from workbench.modeling import load_model, load_tokenizer

    valid = str(CHAT / "valid.jsonl")
    report = run_eval(EvalConfig(models=list(models.values()), labels=list(models), data=[valid],
                                 base=models["the cut, untrained"], max_new_tokens=1, max_length=512,
                                 batch_size=16), log=lambda line: None)
    rows = {r["model"]: {"bits_per_byte": r["bits_per_byte"], "loss": r["loss"]} for r in report["results"]}
    prompts = [prompt_of(c) for c in load_conversations(valid)]
    answers = {}
    for label, path in models.items():
        answers[label] = greedy_answers(load_model(path), load_tokenizer(path), prompts,
                                        max_new_tokens=max_new_tokens, batch_size=32)
    for label, mine in answers.items():
        theirs = answers["teacher"]
        rows[label]["agrees"] = sum(a == b for a, b in zip(mine, theirs)) / len(theirs)
        rows[label]["shared_prefix"] = sum(len(os.path.commonprefix([a, b])) for a, b in zip(mine, theirs)) / len(theirs)
    return rows


def table(rows: dict[str, dict], args) -> str:
    lines = [f"steps {args.steps}, lr {args.lr}, batch 8, seeds {args.seeds}; greedy answers up to "
             f"{args.max_new_tokens} new tokens",
             "| student (64 held-out chat answers) | bits/byte | greedy answer = teacher's | "
             "leading characters shared with the teacher's greedy answer |", "|---|---|---|---|"]
    for label, row in rows.items():
        lines.append(f"| {label} | {row['bits_per_byte']:.3f} | {row['agrees']:.0%} | {row['shared_prefix']:.1f} |")
    for name in VARIANTS:
        seeds = [rows[f"{name} seed {s}"]["bits_per_byte"] for s in args.seeds]
        lines.append(f"mean bits/byte {name}: {sum(seeds) / len(seeds):.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
