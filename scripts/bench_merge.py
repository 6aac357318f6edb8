"""Benchmark `workbench merge` against `mergekit-yaml` on SmolLM2-135M-sized checkpoints.

Builds two deterministic "fine-tunes" of the real checkpoint (base + seeded noise) in a
temporary directory, then runs both tools as separate processes, alternating, on the same
linear, slerp and ties configs, and prints wall time and peak RSS (each child's own
``ru_maxrss`` from ``wait4``) with ratios. A second table merges a model twice as deep
(60 layers, built by repeating the 30) with the native engine, to show that its peak
memory is bounded by a few tensors rather than by model size.

A child's ``ru_maxrss`` starts from its parent's RSS at the fork, so this process stays small:
it never imports torch, and the inputs are written by a spawned child process.

    python scripts/bench_merge.py [--model DIR] [--repeats N] [--work-dir DIR]

Targets (2-core machine): ties >= 5x faster at <= 1/4 of mergekit's peak memory;
linear and slerp >= 2x faster at <= 1/2.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT_MODEL = Path("/work/main/models/smollm2-135m-instruct")
# On a shared, oversubscribed machine OpenMP worker threads that spin-wait between parallel
# regions dominate both tools' run time (mergekit's ties went from ~40 s to ~260 s); with
# --omp-passive both tools run with OMP_WAIT_POLICY=PASSIVE so the comparison measures the
# merges rather than the scheduler.
EXTRA_ENV: dict[str, str] = {}
TARGETS = {"linear": (2, 2), "slerp": (2, 2), "ties": (5, 4)}  # (min speedup, min memory ratio)


def write_variant(base_dir: Path, out_dir: Path, seed: int, scale: float, repeat_layers: int = 1) -> Path:
    """base + scale * std * N(0, 1) per tensor (seed 0: the base itself), optionally with the
    decoder layers repeated ``repeat_layers`` times (layer i + k*L is a copy of layer i)."""
    import torch

    from workbench.checkpoint import Checkpoint, CheckpointWriter, make_lineage
    from workbench.safetensors_io import PlannedTensor

    base = Checkpoint(base_dir)
    layers = base.num_layers
    generator = torch.Generator().manual_seed(seed)

    def renamed(name: str) -> list[str]:
        parts = name.split(".")
        if len(parts) > 2 and parts[1] == "layers":
            index = int(parts[2])
            return [".".join(parts[:2] + [str(index + k * layers)] + parts[3:]) for k in range(repeat_layers)]
        return [name]

    plan = [PlannedTensor(new, base.info(n).shape, base.info(n).torch_dtype)
            for n in base.names() for new in renamed(n)]
    with CheckpointWriter(out_dir, plan) as writer:
        for name in base.names():
            tensor = base.read(name)
            if seed:
                noise = torch.randn(tensor.shape, generator=generator)
                tensor = tensor + scale * tensor.float().std() * noise
            for new in renamed(name):
                writer.write(new, tensor)
        writer.copy_support_files(base_dir)
        config = dict(base.config, num_hidden_layers=layers * repeat_layers)
        writer.write_json("config.json", config)
        return writer.commit(make_lineage("bench-input", {"seed": seed, "scale": scale})).path


def write_inputs(model: Path, work: Path) -> None:
    """Two seeded variants of ``model`` (a, b), and 60-layer versions of all three, unless present."""
    for key, seed in (("a", 1), ("b", 2)):
        if not (work / key).exists():
            write_variant(model, work / key, seed=seed, scale=0.01)
    for key, seed in (("base", 0), ("a", 1), ("b", 2)):
        if not (work / f"{key}-60").exists():
            write_variant(model, work / f"{key}-60", seed=seed, scale=0.01, repeat_layers=2)


def configs(inputs: dict[str, Path]) -> dict[str, dict]:
    base, a, b = (str(inputs[k]) for k in ("base", "a", "b"))
    return {
        "linear": {"merge_method": "linear", "dtype": "float32",
                   "models": [{"model": a, "parameters": {"weight": 0.6}},
                              {"model": b, "parameters": {"weight": 0.4}}]},
        "slerp": {"merge_method": "slerp", "base_model": a, "dtype": "float32",
                  "parameters": {"t": [0, 0.5, 0.3, 0.7, 1]},
                  "models": [{"model": a}, {"model": b}]},
        "ties": {"merge_method": "ties", "base_model": base, "dtype": "float32",
                 "parameters": {"density": 0.5, "weight": 1.0, "normalize": True},
                 "models": [{"model": a}, {"model": b, "parameters": {"weight": 0.7}}]},
    }


def run_measured(command: list[str], out_dir: Path) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MB) and CPU seconds (user + system) of one child process;
    the output is removed after."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           **EXTRA_ENV}
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{stderr[-2000:]}")
    shutil.rmtree(out_dir, ignore_errors=True)
    return seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def commands(config_file: Path, out_dir: Path) -> dict[str, list[str]]:
    venv_bin = Path(sys.executable).parent
    mergekit = str(venv_bin / "mergekit-yaml") if (venv_bin / "mergekit-yaml").exists() else "mergekit-yaml"
    return {"mergekit": [mergekit, str(config_file), str(out_dir)],
            "workbench": [sys.executable, "-m", "workbench", "merge", str(config_file), str(out_dir)]}


def warm_page_cache(paths) -> None:
    for path in paths:
        for file in Path(path).glob("*.safetensors"):
            with open(file, "rb") as f:
                while f.read(1 << 24):
                    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--repeats", type=int, default=1, help="Runs per tool and method (median shown).")
    parser.add_argument("--work-dir", type=Path, default=None, help="Where inputs go (default: a temp dir).")
    parser.add_argument("--methods", default="linear,slerp,ties")
    parser.add_argument("--omp-passive", action="store_true",
                        help="Run both tools with OMP_WAIT_POLICY=PASSIVE (for a busy shared machine).")
    args = parser.parse_args()
    if args.omp_passive:
        EXTRA_ENV["OMP_WAIT_POLICY"] = "PASSIVE"

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-merge-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"inputs in {work}", flush=True)
    writer = multiprocessing.get_context("spawn").Process(target=write_inputs, args=(args.model, work))
    writer.start()
    writer.join()
    if writer.exitcode != 0:
        raise SystemExit(f"writing the inputs failed (exit code {writer.exitcode})")
    inputs = {"base": args.model, "a": work / "a", "b": work / "b"}
    deep = {key: work / f"{key}-60" for key in ("base", "a", "b")}
    methods = args.methods.split(",")

    results = {}
    for method in methods:
        config_file = work / f"{method}.yml"
        config_file.write_text(yaml.safe_dump(configs(inputs)[method], sort_keys=False))
        warm_page_cache(inputs.values())
        runs = {"mergekit": [], "workbench": []}
        for repeat in range(args.repeats):
            order = ["mergekit", "workbench"] if repeat % 2 == 0 else ["workbench", "mergekit"]
            for tool in order:
                out_dir = work / f"out-{tool}"
                runs[tool].append(run_measured(commands(config_file, out_dir)[tool], out_dir))
                wall, rss, cpu = runs[tool][-1]
                print(f"  {method:7s} {tool:9s} {wall:6.1f} s {rss:7.0f} MB {cpu:6.1f} CPU s", flush=True)
        results[method] = {tool: tuple(statistics.median(r[i] for r in rs) for i in range(3))
                           for tool, rs in runs.items()}

    model_mb = sum(f.stat().st_size for f in args.model.glob("*.safetensors")) / 1e6
    print(f"\nSmolLM2-135M fp32 ({model_mb:.0f} MB per model), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, median of {args.repeats}"
          f"{', OMP_WAIT_POLICY=PASSIVE for both' if args.omp_passive else ''}")
    print(f"{'method':8s} {'mergekit s':>10s} {'workbench s':>11s} {'speedup':>8s} {'CPU speedup':>11s} "
          f"{'mergekit MB':>11s} {'workbench MB':>12s} {'mem ratio':>9s}  target (wall, memory)")
    for method, r in results.items():
        (mk_s, mk_mb, mk_cpu), (wb_s, wb_mb, wb_cpu) = r["mergekit"], r["workbench"]
        speed, memory = mk_s / wb_s, mk_mb / wb_mb
        want_speed, want_memory = TARGETS[method]
        verdict = "met" if speed >= want_speed and memory >= want_memory else "MISSED"
        print(f"{method:8s} {mk_s:10.1f} {wb_s:11.1f} {speed:7.1f}x {mk_cpu / wb_cpu:10.1f}x "
              f"{mk_mb:11.0f} {wb_mb:12.0f} {memory:8.1f}x  >={want_speed}x, >={want_memory}x: {verdict}")

    print("\nworkbench merge, 30 vs 60 layers (60 = the 30 repeated)")
    print(f"{'method':8s} {'30L s':>7s} {'60L s':>7s} {'30L MB':>8s} {'60L MB':>8s} {'RSS change':>10s}")
    deep_configs = configs(deep)
    for method in methods:
        config_file = work / f"{method}-60.yml"
        config_file.write_text(yaml.safe_dump(deep_configs[method], sort_keys=False))
        out_dir = work / "out-deep"
        seconds, megabytes, _ = run_measured(commands(config_file, out_dir)["workbench"], out_dir)
        shallow_s, shallow_mb, _ = results[method]["workbench"]
        print(f"{method:8s} {shallow_s:7.1f} {seconds:7.1f} {shallow_mb:8.0f} {megabytes:8.0f} "
              f"{(megabytes - shallow_mb) / shallow_mb:+9.0%}")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
