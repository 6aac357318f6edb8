#!/usr/bin/env python
"""Real result: students trained from the same starting checkpoint by reverse KL against the
same student trained with cross-entropy only, side by side on held-out data.

Each variant is one training run, named in a JSON object: ``{"name": {"kind": "sft" | "distill",
"from": CHECKPOINT or an earlier variant's name, ...settings}}``; settings are the fields of
SFTConfig / DistillConfig (the CLI option names), over the demo's defaults (batch 8, max length
128, one epoch, no validation split, seed 0). Distill variants learn from --teacher. Then
every variant and the starting student are evaluated on both demo tasks' held-out prompts
(loss and token accuracy on the reference answers, exact match of greedy answers, agreement of
greedy answers with the teacher's), as the recipe's eval step does: by default the first 20
validation prompts per task (``--split test --limit 0``: all 200 test prompts). Needs the demo's outputs:

    scripts/demo
    python scripts/distill_vs_ce.py --work /tmp/kd '{"ce": {"kind": "sft", "lr": 5e-4, "max_steps": 40},
        "rkl": {"kind": "distill", "loss": "reverse_kl", "lr": 5e-4, "max_steps": 40}}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEMO_RUNS = REPO / "runs" / "smollm2-chain"
DATA = REPO / "recipes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", help="JSON object: variant name -> {kind, from, settings}")
    parser.add_argument("--work", required=True, help="directory for the variants' checkpoints")
    parser.add_argument("--teacher", default=str(DEMO_RUNS / "ties"))
    parser.add_argument("--student", default=str(DEMO_RUNS / "student"), help="the default 'from'")
    parser.add_argument("--data", default=str(DATA / "mixed" / "train.jsonl"))
    parser.add_argument("--split", default="valid", choices=("valid", "test"),
                        help="held-out split of recipes/data/{dates,records} to evaluate on")
    parser.add_argument("--eval-data", action="append",
                        help="held-out chat JSONL to evaluate on instead of --split (repeatable)")
    parser.add_argument("--limit", type=int, default=20, help="first prompts per task to evaluate (0: all)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per example, training and eval")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--eval-batch-size", type=int, default=40,
                        help="prompts per greedy generation batch (as the demo's eval step)")
    args = parser.parse_args()

    from workbench import distill, sft
    from workbench.evaluate import EvalConfig
    from workbench.evaluate import run as evaluate
    from workbench.training.fields import config_from_dict

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    defaults = dict(data=args.data, batch_size=8, max_length=args.max_length, epochs=1, val_split=0.0, seed=0,
                    progress=False)
    trained: dict[str, str] = {}
    for name, variant in json.loads(args.variants).items():
        settings = dict(variant)
        kind = settings.pop("kind")
        start = settings.pop("from", args.student)
        start = trained.get(start, start)
        out = str(work / name)
        started = time.perf_counter()
        if kind == "sft":
            config = config_from_dict(sft.SFTConfig, {"model": start, "out": out, "overwrite": True, **defaults,
                                                          **settings})
            trained[name] = str(sft.run(config).path)
        else:
            config = config_from_dict(distill.DistillConfig, {"teacher": args.teacher, "student": start, "out": out,
                                                                  "overwrite": True, **defaults, **settings})
            trained[name] = str(distill.run(config).path)
        print(f"{name}: trained in {time.perf_counter() - started:.0f}s", flush=True)

    report = evaluate(EvalConfig(
        models=list(trained.values()), labels=list(trained), base=args.student, reference=args.teacher,
        data=args.eval_data or [str(DATA / "data" / task / f"{args.split}.jsonl") for task in ("dates", "records")],
        max_new_tokens=args.max_new_tokens, limit=args.limit, max_length=args.max_length,
        batch_size=args.eval_batch_size), log=lambda line: None)
    for row in report["results"]:
        print(f"{row['model']:<14} {row['data']:<16} "
              + " ".join(f"{key}={value:.3f}" for key, value in row.items() if isinstance(value, float)))


if __name__ == "__main__":
    main()
