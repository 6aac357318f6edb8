"""TIES' sign election and disjoint mean over the weighted task vectors of one chunk.

The arithmetic is mergekit 0.1.5's (generalized_task_arithmetic.py, consensus 'sum'), each
step rounded to the working dtype as there: the majority sign is +1 where the sum of the
weighted task vectors is >= 0 and -1 elsewhere; an element is kept where its sign equals
the majority (so zeros never are); the result is the sum of the kept elements, divided
(``normalize``) by the sum of the kept elements' weights, or by 1 where none is kept.

The same values are computed with cheaper operations than the literal formulation (which
tests/test_merge_sign_election.py keeps as the reference, bit for bit): comparisons write
their 0.0/1.0 straight into the working dtype (``torch.gt(..., out=)``) instead of making
bool tensors and converting them, several times slower in bfloat16; "sign equals the
majority" is "delta * majority > 0"; and "1 where no weight is kept" is added as
1 - max(masks) instead of a masked fill, for two models (the usual TIES merge) where no
kept weight can sum to zero.
"""

from __future__ import annotations

import torch


def disjoint_merge(deltas: torch.Tensor, weight_column: torch.Tensor, normalize: bool) -> torch.Tensor:
    """The disjoint (optionally normalized) sum of ``deltas`` (models x elements, already
    weighted, in the working dtype) under the sign majority; ``weight_column`` is the
    weights as a (models, 1) tensor of the same dtype."""
    total = sum_rows(deltas)
    majority = torch.ge(total, 0, out=torch.empty_like(total)).mul_(2).sub_(1)
    kept = torch.gt(deltas * majority, 0, out=torch.empty_like(deltas))
    mixed = sum_rows(deltas * kept)
    if not normalize:
        return mixed
    divisor = sum_rows(weight_column * kept)
    if deltas.shape[0] == 2 and _no_zero_pair_sum(weight_column):
        # divisor is zero exactly where no element is kept: add 1 there, 0 elsewhere
        divisor += torch.maximum(kept[0], kept[1]).neg_().add_(1)
    else:
        divisor.masked_fill_(divisor == 0, 1)
    return mixed.div_(divisor)


def _no_zero_pair_sum(weight_column: torch.Tensor) -> bool:
    """Whether both weights are nonzero and their sum, rounded to their dtype, is too."""
    first, second = weight_column[0, 0], weight_column[1, 0]
    return bool(first != 0) and bool(second != 0) and bool(first + second != 0)


def sum_rows(rows: torch.Tensor) -> torch.Tensor:
    """rows.sum(dim=0) as mergekit computes it: accumulated in float32 (or wider) from +0
    and rounded once. For two rows it is their plain sum, several times faster than a
    reduction in bfloat16, plus +0: a reduction starting from +0 never returns -0, while
    (-0) + (-0) is -0, which would then survive ``base + mixed`` where the base is -0."""
    if rows.shape[0] == 2:
        return torch.add(rows[0], rows[1]).add_(0)
    return rows.sum(dim=0)
