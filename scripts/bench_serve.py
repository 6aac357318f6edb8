"""Benchmark `workbench serve`: one client against 16 concurrent clients, through the openai SDK.

Starts `workbench serve MODEL` on a free loopback port, warms it up, then runs each client
count in turn: every client sends chat requests one after another (64-token answers by
default, greedy, each prompt different) until it has sent ``--requests`` of them. Prints
p50/p95 request latency, aggregate completion tokens per second, and the speed-up of each
client count over one client, measured in the same run.

    python scripts/bench_serve.py [--model DIR] [--clients 1,16] [--requests 3] [--max-tokens 64] [--omp-passive]

Target: with 16 clients at least 3x the aggregate tokens/s of one client (batching, not one
request at a time).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "models" / "smollm2-135m-instruct"
TOPICS = ["a lighthouse", "a lost key", "a quiet village", "the first snow", "a clockmaker", "a red kite",
          "a night train", "an old map", "a garden robot", "a paper boat", "a mountain cat", "a jazz band",
          "a rainy market", "a secret door", "a sleepy dragon", "a broken violin"]


def start_server(model: Path, max_concurrent: int, omp_passive: bool) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    if omp_passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    process = subprocess.Popen([sys.executable, "-m", "workbench", "serve", str(model), "--port", "0",
                                "--max-concurrent", str(max_concurrent)],
                               env=env, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        match = re.search(r"on (http://\S+/v1)", line)
        if match:
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return process, match.group(1)
    raise SystemExit(f"the server did not start (exit {process.wait()})")


async def client_loop(client, model: str, client_id: int, requests: int, max_tokens: int, results: list):
    for i in range(requests):
        topic = TOPICS[(client_id + i) % len(TOPICS)]
        started = time.perf_counter()
        answer = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"Write a long story about {topic}."}],
            max_tokens=max_tokens, temperature=0)
        results.append((time.perf_counter() - started, answer.usage.completion_tokens))


async def run(base_url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    import openai

    client = openai.AsyncOpenAI(api_key="none", base_url=base_url, max_retries=0, timeout=3600)
    results: list = []
    started = time.perf_counter()
    await asyncio.gather(*(client_loop(client, model, c, requests, max_tokens, results) for c in range(clients)))
    wall = time.perf_counter() - started
    await client.close()
    latencies = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    return {"clients": clients, "requests": len(results), "tokens": tokens, "wall": wall,
            "p50": statistics.median(latencies), "p95": latencies[round(0.95 * (len(latencies) - 1))],
            "tok_s": tokens / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--clients", default="1,16", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=3, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--base-url", default=None,
                        help="measure a server already running there instead (e.g. `transformers serve`)")
    parser.add_argument("--name", default=None, help="the model name that server knows (default: --model's dir name)")
    parser.add_argument("--omp-passive", action="store_true",
                        help="serve with OMP_WAIT_POLICY=PASSIVE (on an oversubscribed machine spinning OpenMP "
                             "threads can slow every forward tenfold)")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    process, base_url = (None, args.base_url) if args.base_url else start_server(args.model, max(counts),
                                                                                  args.omp_passive)
    name = args.name or args.model.resolve().name
    try:
        asyncio.run(run(base_url, name, 2, 2, 16))  # load the model and warm up
        rows = [asyncio.run(run(base_url, name, c, args.requests, args.max_tokens)) for c in counts]
    finally:
        if process is not None:
            process.terminate()
            process.wait(120)
    base = rows[0]["tok_s"]
    server = base_url if args.base_url else "workbench serve"
    print(f"\n{server}: {name}, {args.max_tokens}-token answers, {args.requests} requests per client, "
          f"{os.cpu_count()} CPU cores{', OMP_WAIT_POLICY=PASSIVE' if args.omp_passive else ''}\n")
    print("| clients | requests | completion tokens | wall s | p50 latency s | p95 latency s | tokens/s | vs 1 client |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['clients']} | {row['requests']} | {row['tokens']} | {row['wall']:.1f} | {row['p50']:.2f} | "
              f"{row['p95']:.2f} | {row['tok_s']:.1f} | {row['tok_s'] / base:.2f}x |")


if __name__ == "__main__":
    main()
