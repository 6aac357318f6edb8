#!/usr/bin/env python
"""How a merge-search trial should merge: in memory into a model held for the whole search,
or to a scratch checkpoint that is then loaded. Both measured in one run on the same inputs,
and each objective term's cost beside them, to size a search to a time budget.

Inputs: two experts and their base (default: the demo's, runs/smollm2-chain/expert-dates and
expert-records, models/smollm2-135m-instruct); a TIES merge at weight 1, density 0.5; the
objective terms of the demo's search (batch 40, 128 tokens, 24 new tokens). The measured figures are the
median of REPEATS trials after one warm-up (which builds the held model and warms the page
cache); both ways compute the same tensors with the same engine.

    python scripts/bench_merge_search.py [--base DIR --experts DIR DIR] [--repeats 3] [--skip-terms]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
DEMO = REPO_ROOT / "runs" / "smollm2-chain"


def timed(fn, repeats: int) -> tuple[float, float]:
    """(wall, CPU) seconds, medians of ``repeats`` calls after a warm-up. On a busy machine
    the CPU time of this process is the steadier figure; wall time adds waits for disk."""
    fn()  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=str(REPO_ROOT / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--experts", nargs=2, default=[str(DEMO / "expert-dates"), str(DEMO / "expert-records")])
    parser.add_argument("--data", nargs=2, default=[str(REPO_ROOT / "recipes/data/dates/valid.jsonl"),
                                                     str(REPO_ROOT / "recipes/data/records/valid.jsonl")])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-terms", action="store_true", help="Time the two ways of merging only.")
    args = parser.parse_args()

    import torch

    from workbench import merge
    from workbench.merge_search.model import MergedModel
    from workbench.merge_search.objective import Objective
    from workbench.merge_search.space import parse_search
    from workbench.modeling import load_model

    torch.manual_seed(0)
    base = str(Path(args.base).resolve())
    config = {"merge_method": "ties", "base_model": base,
              "models": [{"model": str(Path(e).resolve()), "parameters": {"weight": 1.0, "density": 0.5}}
                         for e in args.experts]}
    parsed = merge.load_config(config)
    held = MergedModel(parsed)

    def in_memory():
        held.load(merge.load_config(config))

    with tempfile.TemporaryDirectory(prefix="bench-merge-search-") as scratch:
        def to_disk():
            out = Path(scratch) / "trial"
            merge.run(config, out, backend="native", overwrite=True)
            return load_model(out)

        memory = timed(in_memory, args.repeats)
        disk = timed(to_disk, args.repeats)
    print(f"trial merge, TIES of 2 experts ({Path(base).name}), median of {args.repeats}, wall / CPU seconds:")
    print(f"  in memory into the held model:  {memory[0]:6.1f} / {memory[1]:6.1f}")
    print(f"  to a scratch checkpoint + load: {disk[0]:6.1f} / {disk[1]:6.1f}  "
          f"({disk[0] / memory[0]:.2f}x / {disk[1] / memory[1]:.2f}x the in-memory time)")
    if args.skip_terms:
        return

    terms = [{"data": d} for d in args.data] + [{"data": d, "metric": "exact_match"} for d in args.data]
    print(f"objective terms on the held model, median of {args.repeats}, wall / CPU seconds:")
    for term in terms:
        search = {**config, "search": {"parameters": {"models[0].parameters.density": {"low": 0.1, "high": 1.0}},
                                       "objective": [term], "trials": 1, "max_length": 128, "batch_size": 40,
                                       "max_new_tokens": 24}}
        objective = Objective(parse_search(search, "bench"), held.tokenizer)
        wall, cpu = timed(lambda: objective.measure(held.model), args.repeats)
        print(f"  {objective.labels[0]:32s} {wall:6.1f} / {cpu:6.1f}")

if __name__ == "__main__":
    main()
