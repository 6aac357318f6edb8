"""Tiny merge inputs: a base checkpoint and deterministic "fine-tunes" of it."""

from __future__ import annotations

from pathlib import Path

import torch

from workbench.checkpoint import Checkpoint, CheckpointWriter, make_lineage
from workbench.safetensors_io import PlannedTensor


def perturbed_copy(base_dir: Path, out_dir: Path, seed: int, scale: float, dtype: torch.dtype | None = None,
                   transform=None, zero_fraction: float = 0.0) -> Path:
    """base + scale * N(0, 1) noise on every tensor (seeded), written as a checkpoint;
    ``zero_fraction`` of the elements (seeded) get no noise, as in fine-tunes whose task
    vectors are mostly exact zeros; ``transform(name, tensor)`` may replace a tensor (e.g.
    to change a shape)."""
    base = Checkpoint(base_dir)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name in base.names():
        tensor = base.read(name)
        noise = scale * torch.randn(tensor.shape, generator=generator)
        if zero_fraction:
            noise *= torch.rand(tensor.shape, generator=generator) >= zero_fraction
        noisy = tensor.float() + noise
        tensors[name] = noisy.to(dtype or tensor.dtype)
        if transform is not None:
            tensors[name] = transform(name, tensors[name])
    plan = [PlannedTensor(n, tuple(t.shape), t.dtype) for n, t in tensors.items() if t is not None]
    with CheckpointWriter(out_dir, plan) as writer:
        for name, tensor in tensors.items():
            if tensor is not None:
                writer.write(name, tensor)
        writer.copy_support_files(base_dir, include_config=True)
        return writer.commit(make_lineage("test-fixture", {"seed": seed, "scale": scale})).path
