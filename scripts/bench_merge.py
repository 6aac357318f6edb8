"""Benchmark `workbench merge` against `mergekit-yaml` on SmolLM2-135M-sized checkpoints.

Builds deterministic "fine-tunes" of the real checkpoint in a temporary directory and runs
both tools as separate processes, alternating, on a set of named scenarios, printing wall
time and peak RSS (each child's own ``ru_maxrss`` from ``wait4``) with ratios measured in
the same run. The scenarios (``SCENARIOS``) cover what users merge, not only dense noise:

- linear, slerp, ties: fp32, every weight moved (base + 1% of each tensor's std as noise);
- ties-sparse-fp32: 70% of each task vector exact zeros, density a layer gradient;
- ties-sparse-bf16: the same stored and merged in bfloat16 (deltas take few distinct values);
- ties-lora-bf16: experts that are a merged rank-8 LoRA (low-rank deltas on the decoder's
  projection matrices, every other tensor identical to the base), bfloat16.

A second table merges a model twice as deep (60 layers, built by repeating the 30) with the
native engine, to show that its peak memory is bounded by a few tensors, not model size.

A child's ``ru_maxrss`` starts from its parent's RSS at the fork, so this process stays small:
it never imports torch, and the inputs are written by a spawned child process.

    python scripts/bench_merge.py [--model DIR] [--repeats N] [--work-dir DIR] [--scenarios a,b]

Targets (2-core machine): ties (every scenario) >= 5x faster at <= 1/4 of mergekit's peak
memory; linear and slerp >= 2x faster at <= 1/2.
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

DEFAULT_MODEL = REPO / "models" / "smollm2-135m-instruct"
# On a shared, oversubscribed machine OpenMP worker threads that spin-wait between parallel
# regions dominate both tools' run time (mergekit's ties went from ~40 s to ~260 s); with
# --omp-passive both tools run with OMP_WAIT_POLICY=PASSIVE so the comparison measures the
# merges rather than the scheduler.
EXTRA_ENV: dict[str, str] = {}
TARGETS = {"linear": (2, 2), "slerp": (2, 2), "ties": (5, 4)}  # by method: (min speedup, min memory ratio)
DENSITY_GRADIENT = [0.2, 0.5, 0.8]  # first layer to last
# name -> (input variants: {role: variant name}, method, extra config). Variant names are in VARIANTS.
SCENARIOS = {
    "linear": ({"a": "a", "b": "b"}, "linear", {}),
    "slerp": ({"a": "a", "b": "b"}, "slerp", {}),
    "ties": ({"base": "base", "a": "a", "b": "b"}, "ties", {"dtype": "float32"}),
    "ties-sparse-fp32": ({"base": "base", "a": "sparse-a", "b": "sparse-b"}, "ties",
                         {"dtype": "float32", "density": DENSITY_GRADIENT}),
    "ties-sparse-bf16": ({"base": "base-bf16", "a": "sparse-a-bf16", "b": "sparse-b-bf16"}, "ties",
                         {"dtype": "bfloat16", "density": DENSITY_GRADIENT}),
    "ties-lora-bf16": ({"base": "base-bf16", "a": "lora-a-bf16", "b": "lora-b-bf16"}, "ties",
                       {"dtype": "bfloat16", "density": DENSITY_GRADIENT}),
}
# variant name -> write_variant keyword arguments (seed 0 with no other change: the base itself)
VARIANTS = {
    "a": {"seed": 1}, "b": {"seed": 2},
    "sparse-a": {"seed": 3, "zero_fraction": 0.7}, "sparse-b": {"seed": 4, "zero_fraction": 0.7},
    "base-bf16": {"seed": 0, "dtype": "bfloat16"},
    "sparse-a-bf16": {"seed": 3, "zero_fraction": 0.7, "dtype": "bfloat16"},
    "sparse-b-bf16": {"seed": 4, "zero_fraction": 0.7, "dtype": "bfloat16"},
    "lora-a-bf16": {"seed": 5, "lora_rank": 8, "dtype": "bfloat16"},
    "lora-b-bf16": {"seed": 6, "lora_rank": 8, "dtype": "bfloat16"},
}


def write_variant(base_dir: Path, out_dir: Path, seed: int, scale: float = 0.01, repeat_layers: int = 1,
                  zero_fraction: float = 0.0, dtype: str | None = None, lora_rank: int = 0) -> Path:
    """base + a seeded task vector of scale * (the tensor's std), stored in ``dtype`` (default:
    the base's), optionally with the decoder layers repeated ``repeat_layers`` times (layer
    i + k*L is a copy of layer i). The task vector is N(0, 1) noise on every tensor, with
    ``zero_fraction`` of it exact zeros; or with ``lora_rank`` a product B @ A of that rank
    on the decoder layers' matrices only (a merged LoRA); seed 0: no task vector."""
    import torch

    from workbench.checkpoint import Checkpoint, CheckpointWriter, make_lineage
    from workbench.safetensors_io import PlannedTensor

    base = Checkpoint(base_dir)
    layers = base.num_layers
    generator = torch.Generator().manual_seed(seed)
    stored = getattr(torch, dtype) if dtype else None

    def renamed(name: str) -> list[str]:
        parts = name.split(".")
        if len(parts) > 2 and parts[1] == "layers":
            index = int(parts[2])
            return [".".join(parts[:2] + [str(index + k * layers)] + parts[3:]) for k in range(repeat_layers)]
        return [name]

    def task_vector(name: str, tensor: torch.Tensor) -> torch.Tensor | None:
        std = tensor.float().std()
        if lora_rank:
            if tensor.ndim != 2 or ".layers." not in name:
                return None
            b = torch.randn(tensor.shape[0], lora_rank, generator=generator)
            a = torch.randn(lora_rank, tensor.shape[1], generator=generator)
            return (scale * std / lora_rank ** 0.5) * (b @ a)
        noise = scale * std * torch.randn(tensor.shape, generator=generator)
        if zero_fraction:
            noise *= torch.rand(tensor.shape, generator=generator) >= zero_fraction
        return noise

    plan = [PlannedTensor(new, base.info(n).shape, stored or base.info(n).torch_dtype)
            for n in base.names() for new in renamed(n)]
    with CheckpointWriter(out_dir, plan) as writer:
        for name in base.names():
            tensor = base.read(name)
            delta = task_vector(name, tensor) if seed else None
            if delta is not None:
                tensor = tensor.float() + delta
            for new in renamed(name):
                writer.write(new, tensor.to(stored or base.info(name).torch_dtype))
        writer.copy_support_files(base_dir)
        config = dict(base.config, num_hidden_layers=layers * repeat_layers)
        if dtype:
            config["torch_dtype"] = dtype
        writer.write_json("config.json", config)
        return writer.commit(make_lineage("bench-input", {"seed": seed, "scale": scale})).path


def write_inputs(model: Path, work: Path, variants: list[str], deep: bool) -> None:
    """The named variants of ``model``, and 60-layer versions of base, a and b, unless present."""
    for key in variants:
        if key != "base" and not (work / key).exists():
            write_variant(model, work / key, **VARIANTS[key])
    for key, seed in (("base", 0), ("a", 1), ("b", 2)):
        if deep and not (work / f"{key}-60").exists():
            write_variant(model, work / f"{key}-60", seed=seed, repeat_layers=2)


def config_for(scenario: str, inputs: dict[str, Path]) -> dict:
    roles, method, extra = SCENARIOS[scenario]
    paths = {role: str(inputs[variant]) for role, variant in roles.items()}
    dtype = extra.get("dtype", "float32")
    if method == "linear":
        return {"merge_method": "linear", "dtype": dtype,
                "models": [{"model": paths["a"], "parameters": {"weight": 0.6}},
                           {"model": paths["b"], "parameters": {"weight": 0.4}}]}
    if method == "slerp":
        return {"merge_method": "slerp", "base_model": paths["a"], "dtype": dtype,
                "parameters": {"t": [0, 0.5, 0.3, 0.7, 1]},
                "models": [{"model": paths["a"]}, {"model": paths["b"]}]}
    return {"merge_method": "ties", "base_model": paths["base"], "dtype": dtype,
            "parameters": {"density": extra.get("density", 0.5), "weight": 1.0, "normalize": True},
            "models": [{"model": paths["a"]}, {"model": paths["b"], "parameters": {"weight": 0.7}}]}


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
    parser.add_argument("--repeats", type=int, default=1, help="Runs per tool and scenario (median shown).")
    parser.add_argument("--work-dir", type=Path, default=None, help="Where inputs go (default: a temp dir).")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"Any of {', '.join(SCENARIOS)}.")
    parser.add_argument("--no-deep", action="store_true", help="Skip the 30 vs 60 layers table.")
    parser.add_argument("--omp-passive", action="store_true",
                        help="Run both tools with OMP_WAIT_POLICY=PASSIVE (for a busy shared machine).")
    args = parser.parse_args()
    if args.omp_passive:
        EXTRA_ENV["OMP_WAIT_POLICY"] = "PASSIVE"
    scenarios = args.scenarios.split(",")
    unknown = [name for name in scenarios if name not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario '{unknown[0]}' (known: {', '.join(SCENARIOS)})")
    dense = [name for name in scenarios if name in TARGETS]  # the deep table's scenarios

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-merge-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"inputs in {work}", flush=True)
    variants = sorted({v for name in scenarios for v in SCENARIOS[name][0].values()})
    writer = multiprocessing.get_context("spawn").Process(
        target=write_inputs, args=(args.model, work, variants, bool(dense) and not args.no_deep))
    writer.start()
    writer.join()
    if writer.exitcode != 0:
        raise SystemExit(f"writing the inputs failed (exit code {writer.exitcode})")
    inputs = {key: work / key for key in VARIANTS} | {"base": args.model}
    deep = {"base": work / "base-60", "a": work / "a-60", "b": work / "b-60"}

    results = {}
    for name in scenarios:
        config_file = work / f"{name}.yml"
        config = config_for(name, inputs)
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        warm_page_cache({m["model"] for m in config["models"]} | {config.get("base_model", config["models"][0]["model"])})
        runs = {"mergekit": [], "workbench": []}
        for repeat in range(args.repeats):
            order = ["mergekit", "workbench"] if repeat % 2 == 0 else ["workbench", "mergekit"]
            for tool in order:
                out_dir = work / f"out-{tool}"
                runs[tool].append(run_measured(commands(config_file, out_dir)[tool], out_dir))
                wall, rss, cpu = runs[tool][-1]
                print(f"  {name:17s} {tool:9s} {wall:6.1f} s {rss:7.0f} MB {cpu:6.1f} CPU s", flush=True)
        results[name] = {tool: tuple(statistics.median(r[i] for r in rs) for i in range(3))
                         for tool, rs in runs.items()}

    model_mb = sum(f.stat().st_size for f in args.model.glob("*.safetensors")) / 1e6
    print(f"\nSmolLM2-135M ({model_mb:.0f} MB per model in fp32), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, median of {args.repeats}"
          f"{', OMP_WAIT_POLICY=PASSIVE for both' if args.omp_passive else ''}")
    print(f"{'scenario':17s} {'mergekit s':>10s} {'workbench s':>11s} {'speedup':>8s} {'CPU speedup':>11s} "
          f"{'mergekit MB':>11s} {'workbench MB':>12s} {'mem ratio':>9s}  target (wall, memory)")
    for name, r in results.items():
        (mk_s, mk_mb, mk_cpu), (wb_s, wb_mb, wb_cpu) = r["mergekit"], r["workbench"]
        speed, memory = mk_s / wb_s, mk_mb / wb_mb
        want_speed, want_memory = TARGETS[SCENARIOS[name][1]]
        verdict = "met" if speed >= want_speed and memory >= want_memory else "MISSED"
        print(f"{name:17s} {mk_s:10.1f} {wb_s:11.1f} {speed:7.1f}x {mk_cpu / wb_cpu:10.1f}x "
              f"{mk_mb:11.0f} {wb_mb:12.0f} {memory:8.1f}x  >={want_speed}x, >={want_memory}x: {verdict}")

    if dense and not args.no_deep:
        print("\nworkbench merge, 30 vs 60 layers (60 = the 30 repeated)")
        print(f"{'scenario':17s} {'30L s':>7s} {'60L s':>7s} {'30L MB':>8s} {'60L MB':>8s} {'RSS change':>10s}")
        for name in dense:
            config_file = work / f"{name}-60.yml"
            config_file.write_text(yaml.safe_dump(config_for(name, deep),
                                                  sort_keys=False))
            out_dir = work / "out-deep"
            seconds, megabytes, _ = run_measured(commands(config_file, out_dir)["workbench"], out_dir)
            shallow_s, shallow_mb, _ = results[name]["workbench"]
            print(f"{name:17s} {shallow_s:7.1f} {seconds:7.1f} {shallow_mb:8.0f} {megabytes:8.0f} "
                  f"{(megabytes - shallow_mb) / shallow_mb:+9.0%}")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
