"""The native streaming merge engine: linear, slerp, ties and task_arithmetic.

First everything is checked from headers and configs alone (architectures, vocab sizes,
depth, tensor names, shapes, parameters for every tensor), so bad input fails before a
single tensor is read and nothing is written. Then each output tensor is computed from
memory-mapped views of the inputs and streamed into a pre-planned ``CheckpointWriter``:
resident memory is a few tensors (the output and one scratch buffer) plus chunks.
"""

from __future__ import annotations

import itertools
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from workbench.checkpoint import DTYPE_NAMES, Checkpoint, CheckpointWriter
from workbench.constants import LAYER_NAME
from workbench.errors import CheckpointError, ConfigError
from workbench.merge import methods
from workbench.merge.compatibility import check_compatible
from workbench.merge.config import INPUT, NON_BASE, SHARED, MergeConfig, ModelEntry, resolve_parameter
from workbench.merge.output import Attachments, finish_checkpoint, model_config
from workbench.merge.reader import MappedCheckpoint
from workbench.safetensors_io import PlannedTensor

TORCH_DTYPES = {**DTYPE_NAMES, "float64": torch.float64}  # mergekit configs may ask for float64


@dataclass
class TensorJob:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype  # working dtype
    out_dtype: torch.dtype
    shared: dict  # shared parameters
    per_input: list[dict]  # one dict per input (non-base parameters absent for the base)


@dataclass
class MergePlan:
    config: MergeConfig
    entries: list[ModelEntry]
    checkpoints: list[Checkpoint]
    base_index: int | None
    jobs: list[TensorJob]


def open_inputs(config: MergeConfig, checkpoint_of: Callable[[ModelEntry], Checkpoint]) -> MergePlan:
    """Open and cross-check every input, resolve every parameter for every tensor."""
    entries = config.inputs()
    checkpoints = [checkpoint_of(e) for e in entries]
    base_index = next((i for i, e in enumerate(entries) if e.ref == config.base_model), None)
    check_compatible(entries, checkpoints)
    first = checkpoints[0]
    layers = first.num_layers or 0
    jobs = []
    for name in sorted(first.names()):  # name order: the writer fingerprints tensors as they pass
        infos = [c.info(name) for c in checkpoints]
        stored = infos[0].torch_dtype
        if config.dtype:
            work = TORCH_DTYPES[config.dtype]
        else:
            work = stored
            for info in infos[1:]:
                work = torch.promote_types(work, info.torch_dtype)
        out = TORCH_DTYPES[config.out_dtype] if config.out_dtype else work
        if not stored.is_floating_point:
            jobs.append(TensorJob(name, infos[0].shape, stored, stored, {}, []))
            continue
        # a decoder layer's tensors get t = N / (layers - 1) for layer gradients, all others 0, as in mergekit
        match = LAYER_NAME.match(name)
        t = 0.0 if match is None else (int(match["index"]) / (layers - 1) if layers > 1 else 1.0)
        jobs.append(resolve_job(config, entries, base_index, name, infos[0].shape, t, work, out))
    return MergePlan(config, entries, checkpoints, base_index, jobs)


def resolve_job(config: MergeConfig, entries: list[ModelEntry], base_index: int | None, name: str,
                shape: tuple[int, ...], t: float, work: torch.dtype, out: torch.dtype) -> TensorJob:
    spec = config.spec
    shared = {p.name: _resolve(p, [config.parameters], name, t, config.source)
              for p in spec.parameters if p.scope == SHARED}
    per_input = []
    for i, entry in enumerate(entries):
        values = {}
        for p in spec.parameters:
            if p.scope == INPUT or (p.scope == NON_BASE and i != base_index):
                values[p.name] = _resolve(p, [entry.parameters, config.parameters], name, t,
                                          f"{config.source}: model {entry.ref}")
        per_input.append(values)
    if spec.name == "linear" and shared["normalize"]:
        total = torch.tensor([v["weight"] for v in per_input], dtype=torch.float32).sum()
        if total == 0:
            raise ConfigError(f"{config.source}: the weights sum to 0 for tensor '{name}', and normalize: "
                              "true divides by that sum (change a weight or set normalize: false)")
    return TensorJob(name, shape, work, out, shared, per_input)


def _resolve(param, scopes, name, t, where):
    try:
        return resolve_parameter(param, scopes, name, t)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def merge_tensor(plan: MergePlan, job: TensorJob, inputs: list[torch.Tensor],
                 release: methods.Release) -> torch.Tensor:
    """One output tensor (flat, working dtype) from flat input views."""
    method = plan.config.method
    if not job.dtype.is_floating_point:
        return inputs[plan.base_index or 0].clone()
    if method == "linear":
        return methods.linear(inputs, [p["weight"] for p in job.per_input], job.shared["normalize"],
                              job.dtype, release)
    base = plan.base_index
    if method == "slerp":
        return methods.slerp(job.shared["t"], inputs[base], inputs[1 - base], job.dtype, release)
    others = [i for i in range(len(inputs)) if i != base]
    if not others:
        return inputs[base].to(job.dtype)
    return methods.task_arithmetic(
        inputs[base], [inputs[i] for i in others], [job.per_input[i]["weight"] for i in others],
        [job.per_input[i]["density"] for i in others], job.dtype,
        sign_consensus=method == "ties", sparsify=method == "ties", normalize=job.shared["normalize"],
        lambda_=job.shared["lambda"], rescale=job.shared["rescale"], release=release)


def merged_tensors(plan: MergePlan, progress: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Each output tensor, in plan order, shaped and in its output dtype.

    Tensors are merged concurrently, one per thread (as many threads as torch's intra-op
    pool, each running its operations single-threaded): a tensor's merge is a few dozen
    elementwise passes over cache-sized blocks, too short for torch's own parallel loops to
    pay for their start-up, while whole tensors keep every core busy (TIES on two bf16
    SmolLM2 experts: 1.5-1.8 s against 3.0 s). At most ``2 * threads`` tensors are in
    flight, so memory stays bounded by a few tensors.

    A tensor may be a view onto a memory-mapped input (a copied integer tensor, a merge
    with nothing to mix): use it before asking for the next one."""
    from tqdm import tqdm

    threads = max(1, torch.get_num_threads())
    mapped = [MappedCheckpoint(c) for c in plan.checkpoints]
    pending: deque[Future] = deque()
    jobs = iter(tqdm(plan.jobs, desc=f"merge ({plan.config.method})", unit="tensor",
                     disable=not progress, leave=False))
    pool = ThreadPoolExecutor(threads, thread_name_prefix="merge")
    torch.set_num_threads(1)
    try:
        for job in itertools.islice(jobs, 2 * threads):
            pending.append(_submit(pool, plan, job, mapped))
        while pending:
            name, merged = pending.popleft().result()
            job = next(jobs, None)
            if job is not None:
                pending.append(_submit(pool, plan, job, mapped))
            yield name, merged
            del merged
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)
        for m in mapped:
            m.close()


def _submit(pool: ThreadPoolExecutor, plan: MergePlan, job: TensorJob, mapped: list[MappedCheckpoint]) -> Future:
    """Queue one tensor's merge; the views and page releasers are made here, in the calling
    thread, so the memory maps are only ever opened by one thread."""
    inputs = [m.flat(job.name) for m in mapped]
    releasers = [m.releaser(job.name) for m in mapped]

    def release(start: int, stop: int) -> None:
        for drop in releasers:
            drop(start, stop)

    def merge() -> tuple[str, torch.Tensor]:
        merged = merge_tensor(plan, job, inputs, release).reshape(job.shape).to(job.out_dtype)
        # Again over the whole tensor: a page fault maps the cached pages around it too
        # (the kernel's fault-around), so each pass re-maps a few pages of chunks it had
        # released (about half of every input stayed resident without this).
        release(0, inputs[0].numel())
        return job.name, merged

    return pool.submit(merge)


def run_native(plan: MergePlan, out_dir: Path, *, overwrite: bool, progress: bool,
               lineage_inputs: dict, attachments: Attachments | None = None) -> Checkpoint:
    writer_plan = [PlannedTensor(j.name, j.shape, j.out_dtype) for j in plan.jobs]
    floating = [j.out_dtype for j in plan.jobs if j.out_dtype.is_floating_point]
    dtype_name = str(floating[0]).removeprefix("torch.") if floating else None
    config = model_config(plan.checkpoints[plan.base_index or 0].config, dtype_name)
    with CheckpointWriter(out_dir, writer_plan, overwrite=overwrite, config=config) as writer:
        for name, tensor in merged_tensors(plan, progress):
            writer.write(name, tensor)
        return finish_checkpoint(writer, plan.config, backend="native", lineage_inputs=lineage_inputs,
                                 attachments=attachments)
