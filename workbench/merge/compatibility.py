"""Can these checkpoints be merged tensor by tensor? Answered from headers and configs alone,
before any tensor is read, for the native backend and before handing a config to mergekit."""

from __future__ import annotations

from workbench.checkpoint import Checkpoint
from workbench.errors import CheckpointError
from workbench.merge.config import MergeConfig, ModelEntry


def check_compatible(entries: list[ModelEntry], checkpoints: list[Checkpoint]) -> None:
    """Same architecture, vocab size, depth, tensor names and shapes, from headers alone."""
    first, first_label = checkpoints[0], str(entries[0].ref)
    for entry, ckpt in zip(entries[1:], checkpoints[1:]):
        label = str(entry.ref)
        if ckpt.architecture != first.architecture:
            raise CheckpointError(f"different architectures: {first_label} is {first.architecture}, "
                                  f"{label} is {ckpt.architecture}")
        if ckpt.vocab_size != first.vocab_size:
            raise CheckpointError(f"different vocab sizes: {first_label} has {first.vocab_size}, {label} has "
                                  f"{ckpt.vocab_size}; set tokenizer_source (base, union or a model) to "
                                  "merge across vocabularies")
        if ckpt.num_layers != first.num_layers:
            raise CheckpointError(f"different depths: {first_label} has {first.num_layers} layers, {label} "
                                  f"has {ckpt.num_layers}")
        missing = [n for n in first.tensors if n not in ckpt.tensors]
        extra = [n for n in ckpt.tensors if n not in first.tensors]
        if missing:
            raise CheckpointError(f"tensor '{missing[0]}' is in {first_label} but missing in {label}")
        if extra:
            raise CheckpointError(f"tensor '{extra[0]}' is in {label} but missing in {first_label}")
        for name, info in first.tensors.items():
            other = ckpt.tensors[name].shape
            if other != info.shape:
                raise CheckpointError(f"tensor '{name}' has shape {list(info.shape)} in {first_label} but "
                                      f"{list(other)} in {label}")


def vocab_sizes_differ(config: MergeConfig) -> bool:
    sizes = {Checkpoint(e.ref.path).vocab_size for e in config.inputs()}
    return len(sizes) > 1
