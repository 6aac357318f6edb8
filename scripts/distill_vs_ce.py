#!/usr/bin/env python
"""Real result: a student cut from SmolLM2-135M-Instruct, distilled with reverse KL, against the
same student trained with cross-entropy only (same data, steps, seed, learning rate).

1. cut a student with --layers layers from the teacher (`workbench student init`);
2. cache the teacher's top-k log-probs on the data once (`workbench distill cache-teacher`);
3. train the student twice from the same weights: reverse KL against the cached teacher
   (alpha 1), and cross-entropy on the labels only (alpha 0);
4. on the held-out file, for the teacher and both students: top-1 agreement with the teacher
   and cross-entropy on the reference tokens (teacher-forced), exact match of the greedy answer
   with the reference and with the teacher's greedy answer.

    python scripts/distill_vs_ce.py --data TRAIN.jsonl --val-data VALID.jsonl [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def teacher_forced_metrics(student, teacher, examples, pad_id, spec) -> dict:
    """Mean KD loss, student CE and top-1 agreement with the teacher over the supervised tokens."""
    import torch

    from workbench.data import pad_collate
    from workbench.distill.objective import DistillObjective

    objective = DistillObjective(spec, teacher)
    totals = {"kd_loss": 0.0, "student_ce": 0.0, "teacher_agreement": 0.0}
    tokens = 0
    with torch.no_grad():
        for start in range(0, len(examples), 8):
            _, count, _, sums = objective(student, pad_collate(examples[start:start + 8], pad_id))
            tokens += count
            for key in totals:
                totals[key] += sums[key]
    return {key: value / tokens for key, value in totals.items()}


def greedy_answers(model, tokenizer, conversations, max_new_tokens: int) -> list[str]:
    from workbench.generation import generate_text

    return [generate_text(model, tokenizer, c.messages[0].content, max_new_tokens=max_new_tokens)
            for c in conversations]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="/work/main/models/smollm2-135m-instruct")
    parser.add_argument("--data", required=True)
    parser.add_argument("--val-data", required=True)
    parser.add_argument("--work", default="runs/distill_vs_ce")
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    args = parser.parse_args()

    import torch

    from workbench.data import load_conversations, prepare_datasets
    from workbench.distill import DistillConfig, init_student, run
    from workbench.distill.cache import build_teacher_cache
    from workbench.distill.losses import LossSpec
    from workbench.modeling import load_model, load_tokenizer

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    student_dir = work / "student-init"
    if not student_dir.exists():
        init_student(args.teacher, student_dir, num_layers=args.layers)
    cache_dir = work / "teacher-cache"
    if not cache_dir.exists():
        manifest = build_teacher_cache(args.teacher, args.data, str(cache_dir), top_k=args.top_k,
                                       val_data=args.val_data, max_length=args.max_length, seed=args.seed)
        print(f"teacher cache: {manifest['tokens']} tokens, {manifest['bytes_per_token']} bytes/token", flush=True)
    common = dict(student=str(student_dir), data=args.data, val_data=args.val_data, epochs=args.epochs,
                  batch_size=args.batch_size, lr=args.lr, warmup_ratio=0.1, max_length=args.max_length,
                  seed=args.seed, teacher_cache=str(cache_dir), progress=False)
    trained = {}
    for name, alpha in (("reverse_kl", 1.0), ("ce_only", 0.0)):
        run_started = time.perf_counter()
        trained[name] = run(DistillConfig(out=str(work / name), loss="reverse_kl", alpha=alpha, **common)).path
        print(f"trained {name} in {time.perf_counter() - run_started:.0f} s", flush=True)

    tokenizer = load_tokenizer(args.teacher)
    pad_id = tokenizer.pad_token_id or 0
    _, val_examples, _ = prepare_datasets(args.data, tokenizer, args.max_length, val_path=args.val_data,
                                          seed=args.seed)
    conversations = load_conversations(args.val_data)
    references = [c.messages[-1].content.strip() for c in conversations]
    teacher = load_model(args.teacher, dtype=torch.float32)
    teacher_answers = greedy_answers(teacher, tokenizer, conversations, args.max_new_tokens)
    spec = LossSpec("reverse_kl")
    rows = {"teacher": (teacher, teacher_answers),
            "student before training": (load_model(student_dir), None)}
    for name, path in trained.items():
        rows[f"student {name}"] = (load_model(path), None)
    results = {}
    for name, (model, answers) in rows.items():
        answers = answers or greedy_answers(model, tokenizer, conversations, args.max_new_tokens)
        forced = teacher_forced_metrics(model, teacher, val_examples, pad_id, spec)
        results[name] = {
            **forced,
            "exact_match": sum(a == r for a, r in zip(answers, references)) / len(references),
            "same_answer_as_teacher": sum(a == t for a, t in zip(answers, teacher_answers)) / len(references),
            "example_answer": answers[0],
        }
    print(f"\nheld-out: {len(references)} conversations of {args.val_data}; {args.layers}-layer student, "
          f"{args.epochs} epoch(s), batch {args.batch_size}, lr {args.lr}, seed {args.seed}; reference: "
          f"{references[0]!r}")
    print(f"{'model':<26} {'agree top-1':>11} {'CE':>7} {'KL(s||t)':>9} {'exact match':>11} {'= teacher':>9}")
    for name, r in results.items():
        print(f"{name:<26} {r['teacher_agreement']:>11.3f} {r['student_ce']:>7.3f} {r['kd_loss']:>9.3f} "
              f"{r['exact_match']:>11.3f} {r['same_answer_as_teacher']:>9.3f}   {r['example_answer'][:40]!r}")
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\ntotal {time.perf_counter() - started:.0f} s; results in {work / 'results.json'}")


if __name__ == "__main__":
    main()
