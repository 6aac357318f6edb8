"""Batches for training and evaluation: padded or packed, in an order fixed by (seed, epoch).

Padded batches (``pad_collate``) hold one example per row, right-padded, with an
``attention_mask``. Packed batches (``packed_collate``) hold several examples per row and no
``attention_mask``: their ``position_ids`` restart at 0 for every example, and transformers
(5.x ``masking_utils.find_packed_sequence_indices``; flash-attention's varlen path alike) then
keeps attention within each example. That detection only runs when the model is called with no
attention mask and no cache, so call models through ``model_inputs(batch)``, which passes
``use_cache=False``. Padding after the last example of a packed row starts its own positions at
0, so it forms a segment of its own and never attends to real tokens.

``batches`` is what the training loop iterates: the order depends only on (seed, epoch), and
``start`` skips the batches already consumed, so a resumed run sees exactly the batches the
uninterrupted run would have.
"""

from __future__ import annotations

import bisect
import math
from typing import Iterator, Sequence

import torch

from workbench.data.tokenize import IGNORE_INDEX, TokenizedExample
from workbench.errors import ConfigError, DataError

PackedRow = list[TokenizedExample]


def pad_collate(examples: Sequence[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """One example per row, right-padded to the longest: input_ids, attention_mask, labels, position_ids."""
    width = max(len(e) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    position_ids = torch.arange(width).expand(len(examples), width).clone()
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "position_ids": position_ids}


def pack_examples(examples: Sequence[TokenizedExample], max_length: int) -> list[PackedRow]:
    """Group examples into rows of at most ``max_length`` tokens (best-fit decreasing).

    Deterministic for a given input order; examples longer than ``max_length`` are an error
    (truncate or drop them first, see ``prepare_datasets``).
    """
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i]), i))
    rows: list[PackedRow] = []
    free: list[tuple[int, int]] = []  # (tokens still free, row index), kept sorted
    for i in order:
        example = examples[i]
        if len(example) > max_length:
            raise DataError(f"{example.source}: {len(example)} tokens do not fit a packed row of "
                            f"{max_length}; truncate or drop too-long examples first")
        slot = bisect.bisect_left(free, (len(example), -1))
        if slot == len(free):
            rows.append([example])
            remaining, row = max_length - len(example), len(rows) - 1
        else:
            remaining, row = free.pop(slot)
            rows[row].append(example)
            remaining -= len(example)
        if remaining > 0:
            bisect.insort(free, (remaining, row))
    return rows


def packed_collate(rows: Sequence[PackedRow], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Packed rows, right-padded to the longest row: input_ids, labels, position_ids (no attention_mask)."""
    width = max(sum(len(e) for e in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for example in row:
            n = len(example)
            input_ids[r, at:at + n] = torch.tensor(example.input_ids)
            labels[r, at:at + n] = torch.tensor(example.labels)
            position_ids[r, at:at + n] = torch.arange(n)
            at += n
        position_ids[r, at:] = torch.arange(width - at)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def model_inputs(batch: dict[str, torch.Tensor]) -> dict:
    """Keyword arguments for a transformers causal LM forward (labels left out: compute the loss yourself)."""
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    if "attention_mask" in batch:
        inputs["attention_mask"] = batch["attention_mask"]
    return inputs


def batch_items(examples: Sequence[TokenizedExample], *, packing: bool,
                max_length: int | None) -> list:
    """What one batch row holds: examples, or packed rows of examples."""
    if not packing:
        return list(examples)
    if not max_length:
        raise ConfigError("packing needs a max_length (the length of a packed row)")
    return pack_examples(examples, max_length)


def num_batches(examples: Sequence[TokenizedExample], batch_size: int, *, packing: bool = False,
                max_length: int | None = None) -> int:
    """Batches in one epoch (the last one may be smaller)."""
    _check_batch_size(batch_size)
    return math.ceil(len(batch_items(examples, packing=packing, max_length=max_length)) / batch_size)


def steps_per_epoch(examples: Sequence[TokenizedExample], batch_size: int, grad_accum: int = 1, *,
                    packing: bool = False, max_length: int | None = None) -> int:
    """Optimizer steps in one epoch: batches / grad_accum, the last step taking what is left."""
    if grad_accum < 1:
        raise ConfigError(f"grad_accum must be at least 1, got {grad_accum}")
    return math.ceil(num_batches(examples, batch_size, packing=packing, max_length=max_length) / grad_accum)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """A permutation of range(n) that depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def batches(examples: Sequence[TokenizedExample], batch_size: int, *, seed: int, epoch: int,
            packing: bool = False, max_length: int | None = None, pad_id: int = 0,
            shuffle: bool = True, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """The batches of one epoch, from batch number ``start`` on.

    With ``shuffle`` the rows (examples, or packed rows) come in the order ``epoch_order(seed,
    epoch)``; packing itself does not depend on the epoch, so every epoch has the same number of
    batches. Uses no global random state.
    """
    _check_batch_size(batch_size)
    items = batch_items(examples, packing=packing, max_length=max_length)
    order = epoch_order(len(items), seed, epoch) if shuffle else list(range(len(items)))
    collate = packed_collate if packing else pad_collate
    for first in range(start * batch_size, len(items), batch_size):
        yield collate([items[i] for i in order[first:first + batch_size]], pad_id)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
