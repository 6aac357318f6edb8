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

from typing import Sequence

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


SAME_WIDTH_INT = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32,
                  torch.float64: torch.int64}  # to view a float tensor's bit patterns
PAIR_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


class PairConsensus:
    """``disjoint_merge`` for exactly two weighted task vectors that are finite and whose sum
    is finite, with the same bits, in about a third of the time: every step but the three
    float operations (the sum that elects the sign, the sum of the kept elements, the
    division) works on the bit patterns, in place, in scratch buffers made once per tensor.

    For two elements e0, e1 mergekit's election keeps e_i where e_i * majority > 0, the
    majority being +1 where e0 + e1 >= 0: that is, e_i is nonzero and has the sign bit of
    the sum (the sum of two finite values is -0 only where both are zero, and its sign bit
    is that of the larger magnitude, +0 where they cancel, as mergekit's ``>= 0`` says).
    Dropped elements become +0, so the kept sum e0' + e1' is exactly mergekit's
    (e0 * k0 + e1 * k1) + 0. The divisor, the sum of the kept elements' weights (1 where
    none is kept or where both weights cancel), takes one of four values, chosen from the
    keep masks by exclusive-or."""

    def __init__(self, weights: Sequence[float], dtype: torch.dtype, normalize: bool, size: int):
        self.dtype, self.normalize = dtype, normalize
        self.integer = SAME_WIDTH_INT[dtype]
        self.shift = dtype.itemsize * 8 - 1  # the sign bit; x >> shift is -1 where it is set, else 0
        self.magnitude = (1 << self.shift) - 1
        column = torch.tensor(list(weights), dtype=dtype)
        both = column.sum()  # mergekit's divisor where both are kept (its sum of kept weights)
        one = torch.ones((), dtype=dtype)
        patterns = [int(v) for v in torch.stack([one, column[0], column[1], both if both != 0 else one])
                    .view(self.integer).tolist()]
        one_bits, first, second, both_bits = patterns
        self.first_term, self.second_term = one_bits ^ first, one_bits ^ second
        self.both_term = one_bits ^ first ^ second ^ both_bits  # with the two above: both_bits
        self.one_bits = one_bits
        self.size = size
        self._buffers = (torch.empty((2, size), dtype=dtype), torch.empty(size, dtype=dtype),
                         torch.empty((2, size), dtype=self.integer), torch.empty((2, size), dtype=self.integer))
        self._full = self._views(size)

    def _views(self, n: int) -> tuple:
        """Every view ``__call__`` uses, onto the first n elements of each buffer (made once for
        full blocks: slicing and viewing cost microseconds per call, a fifth of the work)."""
        deltas, total, keep, scratch = (b[..., :n] for b in self._buffers)
        rows = deltas.view(self.integer)
        return (deltas, deltas[0], deltas[1], rows, rows[0], rows[1], total, total.view(self.integer),
                keep, keep[0], keep[1], scratch, scratch[0], scratch[1], scratch[0].view(self.dtype))

    def deltas(self, n: int) -> torch.Tensor:
        """The (2, n) buffer the caller fills with the weighted task vectors of a block."""
        return (self._full if n == self.size else self._views(n))[0]

    def __call__(self, n: int) -> torch.Tensor:
        """The disjoint (normalized) sum of the n-element block in ``deltas(n)`` (overwritten),
        as a view of a buffer valid until the next call."""
        (deltas, first, second, rows, first_bits, second_bits, total, total_bits, keep, keep_first, keep_second,
         scratch, divisor, other, divisor_value) = self._full if n == self.size else self._views(n)
        torch.add(first, second, out=total)
        agree = total_bits.bitwise_not_()  # sign bit set where the sum's is clear
        torch.bitwise_xor(first_bits, agree, out=keep_first)  # sign bit set where the row's equals the sum's
        torch.bitwise_xor(second_bits, agree, out=keep_second)
        keep.bitwise_right_shift_(self.shift)
        torch.bitwise_and(rows, self.magnitude, out=scratch).neg_()  # sign bit set where nonzero
        keep.bitwise_and_(scratch.bitwise_right_shift_(self.shift))
        rows.bitwise_and_(keep)  # dropped elements are +0
        mixed = torch.add(first, second, out=total)
        if not self.normalize:
            return mixed
        torch.bitwise_and(keep_first, self.first_term, out=divisor).bitwise_xor_(self.one_bits)
        divisor.bitwise_xor_(torch.bitwise_and(keep_second, self.second_term, out=other))
        divisor.bitwise_xor_(torch.bitwise_and(keep_first, keep_second, out=other).bitwise_and_(self.both_term))
        return mixed.div_(divisor_value)
