"""The native merge methods: pure functions from input tensors to one merged tensor.

Each reproduces mergekit 0.1.5's arithmetic (mergekit/merge_methods/linear.py, slerp.py,
generalized_task_arithmetic.py, sparsify.py): the same dtypes and, where it matters for the
result, the same order of operations, so float32 and float64 results agree to rounding and
bfloat16 results to at most one rounding step.
What differs is how the work is done: each function walks the flattened tensors in chunks
of ``CHUNK`` elements (TIES and task arithmetic in smaller ``CACHE_BLOCK`` ones), so scratch
memory is a few chunks whatever the tensor size, and
calls ``release(start, stop)`` once it is done with an element range in a pass, which lets
a caller that memory-maps its inputs drop those pages (resident memory stays bounded too).

Inputs are 1-D (flattened) tensors in their stored dtype; ``dtype`` is the working dtype
(mergekit's ``dtype:``, else the inputs' promoted dtype): inputs are rounded to it first,
as mergekit does when it loads them. The result is 1-D in the working dtype.

Coefficients (linear weights, slerp's t) are float64 for float64 merges, float32 otherwise,
as mergekit's batched parameters are.

TIES' magnitude trim keeps exactly k = max(1, int(density * numel)) elements per tensor,
as mergekit does, with the cut-off found in O(n) instead of a full argsort: by counting
nonzeros where the trim keeps all of them (during the TIES walk itself, which merges the
tensor again where the count disagrees), else from a histogram of bit patterns (bfloat16,
float16), by selection in place (float32/float64 task vectors with few zeros) or from two
histograms of the bit patterns' halves (mostly-zero float32/float64 ones; for two float32
task vectors without rescale, the second histogram is folded into the TIES walk). Where
several magnitudes tie at the cut-off value (common in bfloat16 and float16, whose task
vectors take few distinct values), mergekit keeps an arbitrary subset (unstable argsort);
here the first tied elements in flat index order are kept, so the result is deterministic
and differs from mergekit's only in which of the tied elements survive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from workbench.merge.sign_election import PAIR_DTYPES, SAME_WIDTH_INT, PairConsensus, disjoint_merge, sum_rows

CHUNK = 1024 * 1024  # elements; equal to mergekit's slerp chunk, so its norms are summed alike
CACHE_BLOCK = 256 * 1024
Release = Callable[[int, int], None]


def _keep(start: int, stop: int) -> None:
    """The default release: inputs that are ordinary tensors need nothing done."""


def _chunks(numel: int, size: int | None = None):
    size = size or CHUNK
    for start in range(0, numel, size):
        yield start, min(start + size, numel)


def _cache_blocks(numel: int):
    """Chunks of at most ``CACHE_BLOCK`` elements, for walks that make a dozen temporaries
    per chunk: they stay in a core's L2 cache (2 MB here), which more than pays for the
    extra calls (TIES on two bfloat16 models: 14 against 24 ns per element at 1M)."""
    return _chunks(numel, min(CHUNK, CACHE_BLOCK))


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def linear(tensors: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool,
           dtype: torch.dtype, release: Release = _keep) -> torch.Tensor:
    """Weighted sum in float32 (float64 for float64 merges), divided by the weight sum when
    ``normalize``.

    mergekit accumulates into zeros with addcmul; starting from the first product instead
    gives the same values and saves a pass."""
    acc = _accumulator_dtype(dtype)
    coefficients = torch.tensor(list(weights), dtype=acc)
    denominator = coefficients.sum()
    numel = tensors[0].numel()
    out = torch.empty(numel, dtype=dtype)
    for start, stop in _chunks(numel):
        result = out[start:stop] if acc == dtype else torch.empty(stop - start, dtype=acc)
        torch.mul(tensors[0][start:stop].to(dtype).to(acc), coefficients[0], out=result)
        for tensor, coefficient in zip(tensors[1:], coefficients[1:]):
            result.addcmul_(tensor[start:stop].to(dtype), coefficient)
        if normalize:
            result.div_(denominator)
        if acc != dtype:
            out[start:stop] = result
        release(start, stop)
    return out


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dtype: torch.dtype,
          release: Release = _keep, dot_threshold: float = 0.9995, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation from v0 (t=0, the base) to v1 (t=1) over the whole tensor;
    nearly colinear or antipodal pairs (|cos| > dot_threshold) interpolate linearly.

    The cosine is summed from normalized products chunk by chunk exactly as mergekit does:
    any other order changes the coefficients in their last bit, which is enough to move
    near-zero outputs (where the two products cancel) by many bfloat16 steps."""
    acc = _accumulator_dtype(dtype)
    numel = v0.numel()
    t_ = torch.tensor([t], dtype=acc).reshape(-1, 1)

    def rows(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (v0[start:stop].to(dtype).to(acc).reshape(1, -1),
                v1[start:stop].to(dtype).to(acc).reshape(1, -1))

    if numel == 0:
        return torch.empty(0, dtype=dtype)
    norm_a_parts, norm_b_parts = [], []
    for start, stop in _chunks(numel):
        x, y = rows(start, stop)
        norm_a_parts.append(torch.linalg.vector_norm(x, dim=1, keepdim=True))
        norm_b_parts.append(torch.linalg.vector_norm(y, dim=1, keepdim=True))
        release(start, stop)
    norm_a = torch.linalg.vector_norm(torch.stack(norm_a_parts), dim=0)
    norm_b = torch.linalg.vector_norm(torch.stack(norm_b_parts), dim=0)
    norm_a = torch.where(norm_a > eps, norm_a, 1)
    norm_b = torch.where(norm_b > eps, norm_b, 1)
    dot_parts = []
    for start, stop in _chunks(numel):
        x, y = rows(start, stop)
        dot_parts.append(torch.div(x, norm_a).mul_(torch.div(y, norm_b)).sum(dim=1, keepdim=True))
        release(start, stop)
    dot = torch.stack(dot_parts).sum(dim=0).clamp(-1, 1)
    colinear = dot.abs() > dot_threshold
    theta = torch.acos(torch.where(colinear, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(colinear, 1 - t_, torch.sin((1 - t_) * theta) / sin_theta)
    coef_b = torch.where(colinear, t_, torch.sin(t_ * theta) / sin_theta)
    out = torch.empty(numel, dtype=dtype)
    for start, stop in _chunks(numel):
        x, y = rows(start, stop)
        result = torch.mul(x, coef_a).add_(torch.mul(y, coef_b))
        out[start:stop] = result.reshape(-1)
        release(start, stop)
    return out


@dataclass
class MagnitudeTrim:
    """TIES' magnitude trim of one task vector: exactly ``keep`` elements survive.

    ``threshold`` is the keep-th largest magnitude (as float32, the precision mergekit sorts
    in); every element above it survives, and of the ``ties`` elements equal to it the first
    ``ties_kept`` in flat index order. ``scale`` is the ``rescale`` factor
    L1(task vector) / L1(kept elements), or None. ``largest`` bounds every magnitude from
    above (inf or NaN where some element is not finite). Where known, every tie in the first
    ``ties_kept_until`` elements is kept, and they hold ``ties_before`` ties: a walk needs
    not count ties there."""

    threshold: float
    ties: int
    ties_kept: int
    scale: torch.Tensor | None
    largest: float
    ties_kept_until: int = 0
    ties_before: int = 0

    def pass_(self) -> "_TrimPass":
        """A trimmer for one walk over the tensor, chunk after chunk in ascending order."""
        return _TrimPass(self)


class _TrimPass:
    """Zeroes, chunk by chunk, what the trim drops; counts the ties kept so far."""

    def __init__(self, trim: MagnitudeTrim):
        self.trim = trim
        self.ties_left = trim.ties_kept - trim.ties_before  # beyond ties_kept_until
        self.position = 0

    def __call__(self, delta: torch.Tensor) -> None:
        start = self.position
        self.position += delta.numel()
        threshold = self.trim.threshold
        if threshold <= 0:  # the cut-off is zero: whichever zeros are "kept", they stay zero
            return
        all_ties_kept = min(delta.numel(), self.trim.ties_kept_until - start)
        if all_ties_kept > 0:
            _zero_below(delta[:all_ties_kept], threshold)
            delta = delta[all_ties_kept:]
            if delta.numel() == 0:
                return
        if self.ties_left == 0:
            _zero_at_most(delta, threshold)
            return
        _zero_below(delta, threshold)
        if self.trim.ties_kept == self.trim.ties:
            return
        tied = _magnitudes_equal(delta, threshold)
        count = int(tied.count_nonzero())
        if count <= self.ties_left:
            self.ties_left -= count
            return
        _zero_at_most(delta[_index_after(tied, self.ties_left):], threshold)
        self.ties_left = 0


def _index_after(flags: torch.Tensor, count: int) -> int:
    """The index just past the count-th True in ``flags`` (which holds more than count),
    by bisection on counts of prefixes: about two passes over ``flags``, several times
    cheaper than listing the True positions with nonzero()."""
    low, high, before = 0, flags.numel(), 0  # the answer is in (low, high]; before = count in [0, low)
    while high - low > 1:
        middle = (low + high) // 2
        inside = int(flags[low:middle].count_nonzero())
        if before + inside >= count:
            high = middle
        else:
            low, before = middle, before + inside
    return high


def magnitude_trim(base: torch.Tensor, other: torch.Tensor, density: float, dtype: torch.dtype,
                   rescale: bool = False, release: Release = _keep) -> MagnitudeTrim:
    """TIES' trim of the task vector other - base to k = max(1, int(density * numel))
    elements, as mergekit's sparsify.magnitude (the k largest magnitudes, compared in float32).

    mergekit breaks ties at the cut-off by an unstable argsort; here the first ones by flat
    index are kept, so the kept count is exactly k and the result deterministic. The cut-off
    is found in O(n), reading the inputs chunk by chunk: where the density exceeds the task
    vector's nonzero fraction (as the first chunk suggests), by counting nonzeros; else
    from histograms of the magnitudes' bit patterns (ordered as the values are), with no
    tensor-sized scratch: bfloat16/float16 in one pass over their 2^15 patterns (selection
    by partitioning is slow on such data, whose few distinct values repeat millions of
    times), float32/float64 (compared in float32) in two, the high halves first; or, for
    float32/float64 task vectors with few zeros, by numpy's introselect in one float32
    buffer (faster there than two histogram passes).
    """
    keep = _kept_count(density, base.numel())
    return _trim(base, other, keep, _nonzero_fraction(base, other, dtype), dtype, rescale, release)


def _trim(base: torch.Tensor, other: torch.Tensor, keep: int, nonzero_fraction: float, dtype: torch.dtype,
          rescale: bool, release: Release) -> MagnitudeTrim:
    """magnitude_trim, once the first chunk's nonzero fraction is known."""
    if nonzero_fraction < keep / base.numel():
        trim = _keep_every_nonzero(base, other, keep, dtype, release)
        if trim is not None:
            return trim
    if dtype in _HALF_WIDTH:
        return _histogram_trim(base, other, keep, dtype, rescale, release)
    if nonzero_fraction > _DENSE:
        return _selection_trim(base, other, keep, dtype, rescale, release)
    return _radix_trim(base, other, keep, dtype, rescale, release)


def _kept_count(density: float, numel: int) -> int:
    """k, the number of elements TIES' trim keeps (mergekit's rounding)."""
    return max(1, int(density * numel))


_SAMPLE = 64 * 1024  # elements whose task vector tells how sparse the rest is likely to be


def _nonzero_fraction(base: torch.Tensor, other: torch.Tensor, dtype: torch.dtype) -> float:
    """The fraction of nonzero task vector elements among the first ``_SAMPLE``."""
    stop = min(base.numel(), _SAMPLE)
    nonzero, _ = _count_nonzero(other[:stop].to(dtype) - base[:stop].to(dtype))
    return nonzero / max(1, stop)


def _keep_every_nonzero(base: torch.Tensor, other: torch.Tensor, keep: int, dtype: torch.dtype,
                        release: Release) -> MagnitudeTrim | None:
    """The trim when it keeps more than the task vector's nonzero elements: its k-th largest
    magnitude is 0, so it drops nothing (and rescale has nothing to rescale). Found by one
    pass counting nonzeros, instead of histograms, when the first chunk says that is
    likely (fine-tunes whose task vectors are mostly exact zeros, at densities above their
    nonzero fraction); None when the count says otherwise."""
    nonzero, largest = 0, 0.0
    for start, stop in _cache_blocks(base.numel()):
        count, block_largest = _count_nonzero(other[start:stop].to(dtype) - base[start:stop].to(dtype))
        nonzero += count
        largest = block_largest if not block_largest <= largest else largest  # NaN sticks
        release(start, stop)
    if keep <= nonzero:
        return None
    return MagnitudeTrim(0.0, base.numel() - nonzero, keep - nonzero, None, largest)


class _NonzeroCount:
    """A trim taken on trust while the walk runs: the first chunk says the trim keeps every
    nonzero element (it drops nothing), so instead of a pass that counts nonzeros before
    the walk, the walk counts them as it goes (its pass leaves the task vector as it is).
    ``resolved()`` afterwards says whether the trust was right: the trim a counting pass
    would have found, or None (the tensor is then merged again with its trims found first)."""

    scale = None  # no rescale: a trim that drops nothing has nothing to rescale

    def __init__(self, numel: int, keep: int):
        self.numel, self.keep = numel, keep
        self.nonzero, self.largest = 0, 0.0

    def pass_(self) -> "_NonzeroCount":
        return self

    def __call__(self, delta: torch.Tensor) -> None:
        integer = SAME_WIDTH_INT[delta.dtype]
        count, largest = _count_magnitudes(torch.bitwise_and(delta.view(integer), torch.iinfo(integer).max),
                                           delta.dtype)
        self.nonzero += count
        self.largest = largest if not largest <= self.largest else self.largest  # NaN sticks

    def resolved(self) -> MagnitudeTrim | None:
        if self.keep <= self.nonzero:
            return None
        return MagnitudeTrim(0.0, self.numel - self.nonzero, self.keep - self.nonzero, None, self.largest)


def _count_nonzero(delta: torch.Tensor) -> tuple[int, float]:
    """How many elements of ``delta`` (overwritten) are nonzero, and the largest magnitude
    (NaN if any is NaN): on bit patterns, several times faster than count_nonzero on floats."""
    integer = SAME_WIDTH_INT[delta.dtype]
    return _count_magnitudes(delta.view(integer).bitwise_and_(torch.iinfo(integer).max), delta.dtype)


def _count_magnitudes(bits: torch.Tensor, dtype: torch.dtype) -> tuple[int, float]:
    """_count_nonzero on magnitudes' bit patterns, ordered as the values (count_nonzero on
    integers: 0.3 ns/element in bfloat16, against 0.4 for clamping and summing)."""
    if bits.numel() == 0:
        return 0, 0.0
    return int(torch.count_nonzero(bits)), float(bits.max().reshape(1).view(dtype))


_HALF_WIDTH = (torch.bfloat16, torch.float16)
# Tensors of up to this many cache blocks keep each block's histogram (128 KB each) so the
# walk knows where the kept ties end and compares magnitudes with the cut-off only there.
_TIE_BLOCKS = 32
_PATTERNS = 1 << 15  # bit patterns of a non-negative 16-bit float, in the order of their values


def _histogram_trim(base: torch.Tensor, other: torch.Tensor, keep: int, dtype: torch.dtype, rescale: bool,
                    release: Release) -> MagnitudeTrim:
    blocks = list(_cache_blocks(base.numel()))
    counts = torch.zeros(_PATTERNS, dtype=torch.int64)
    per_block = torch.empty((len(blocks), _PATTERNS), dtype=torch.int32) if len(blocks) <= _TIE_BLOCKS else None
    for i, (start, stop) in enumerate(blocks):
        delta = other[start:stop].to(dtype) - base[start:stop].to(dtype)
        block_counts = torch.bincount(delta.abs_().view(torch.int16), minlength=_PATTERNS)
        counts += block_counts
        if per_block is not None:
            per_block[i] = block_counts
        release(start, stop)
    from_top = counts.flip(0).cumsum(0)
    cut = _PATTERNS - 1 - int(torch.searchsorted(from_top, keep))  # the keep-th largest's pattern
    above = int(from_top[_PATTERNS - 2 - cut]) if cut < _PATTERNS - 1 else 0
    threshold = float(torch.tensor([cut], dtype=torch.int16).view(dtype))
    largest = float(torch.tensor([_last_nonzero(counts)], dtype=torch.int16).view(dtype))
    trim = MagnitudeTrim(threshold, int(counts[cut]), keep - above, None, largest)
    if per_block is not None and 0 < trim.ties_kept < trim.ties and threshold > 0:
        ties_through = per_block[:, cut].cumsum(0)  # ties in blocks 0..i
        whole = int(torch.searchsorted(ties_through, trim.ties_kept, right=True))  # blocks whose ties are all kept
        if whole:
            trim.ties_kept_until, trim.ties_before = blocks[whole - 1][1], int(ties_through[whole - 1])
    if rescale and threshold > 0:
        present = counts.nonzero().reshape(-1)
        values = present.to(torch.int16).view(dtype).double()
        sums = counts[present].double() * values
        before = sums.sum().to(dtype)
        after = (sums[present > cut].sum() + trim.ties_kept * threshold).to(dtype)
        trim.scale = _rescale_factor(before, after)
    return trim


_DENSE = 7 / 8  # nonzero fraction above which float32 selects its cut-off in place (introselect)


def _selection_trim(base: torch.Tensor, other: torch.Tensor, keep: int, dtype: torch.dtype, rescale: bool,
                    release: Release) -> MagnitudeTrim:
    """float32/float64 task vectors with few zeros: their magnitudes (as float32) in one
    buffer, the cut-off selected in place by numpy's introselect, faster there than two
    histogram passes (on mostly equal values, as zeros, introselect slows down many times
    over: those go the radix way)."""
    numel = base.numel()
    magnitudes = torch.empty(numel, dtype=torch.float32)
    wide_sum = torch.zeros((), dtype=torch.float64)  # float64 inputs: L1 summed in float64
    for start, stop in _chunks(numel):
        segment = magnitudes[start:stop]
        if dtype == torch.float32:
            torch.sub(other[start:stop].float(), base[start:stop].float(), out=segment).abs_()
        else:
            delta = (other[start:stop].to(dtype) - base[start:stop].to(dtype)).abs_()
            segment.copy_(delta)
            if rescale:
                wide_sum += delta.sum()
        release(start, stop)
    nonzero = int(magnitudes.count_nonzero())  # fast on mostly nonzero values (branches predicted)
    if keep > nonzero:  # the cut-off is zero: every nonzero element is kept, the trim is a no-op
        return MagnitudeTrim(0.0, numel - nonzero, keep - nonzero, None, float(magnitudes.max()))
    l1 = magnitudes.sum() if rescale and dtype != torch.float64 else None
    cut = numel - keep
    values = magnitudes.numpy()
    values.partition(cut)
    threshold = float(values[cut])
    top = magnitudes[cut:]
    ties_kept = keep - int((top > threshold).count_nonzero())
    ties = ties_kept + int((magnitudes[:cut] == threshold).count_nonzero())
    trim = MagnitudeTrim(threshold, ties, ties_kept, None, float(top.max()))  # NaN propagates
    if not rescale:
        return trim
    if dtype == torch.float64:
        trim.scale = _rescale_factor(wide_sum, _kept_l1(base, other, trim, release))
    else:
        trim.scale = _rescale_factor(l1, top.sum())
    return trim


_HIGH = 1 << 15  # high halves (16 bits) of a non-negative float32's bit pattern
_LOW = 1 << 16  # low halves


@dataclass
class _HighCut:
    """What the first histogram (high halves of the bit patterns) tells of a float32 cut-off."""

    keep: int
    cut_high: int  # the cut-off's high half: its patterns are lowest ... lowest + _LOW - 1
    above_high: int  # magnitudes in higher bins, all kept
    in_bin: int  # magnitudes in the cut-off's own bin
    largest: float
    wide_sum: torch.Tensor  # rescale: L1 summed in float64

    @property
    def lowest(self) -> int:
        return self.cut_high << 16

    def trim(self, within: torch.Tensor) -> MagnitudeTrim:
        """The trim, from the counts of the bin's patterns (lowest + i at [i])."""
        within_from_top = within.flip(0).cumsum(0)
        index = int(torch.searchsorted(within_from_top, self.keep - self.above_high))
        cut = self.lowest + _LOW - 1 - index
        above = self.above_high + (int(within_from_top[index - 1]) if index else 0)
        threshold = float(torch.tensor([cut], dtype=torch.int32).view(torch.float32))
        return MagnitudeTrim(threshold, int(within[cut - self.lowest]), self.keep - above, None, self.largest)


def _high_cut(base: torch.Tensor, other: torch.Tensor, keep: int, dtype: torch.dtype, rescale: bool,
              release: Release) -> _HighCut:
    """The first histogram pass of ``_radix_trim``."""
    numel = base.numel()
    high = torch.zeros(_HIGH, dtype=torch.int64)
    wide_sum = torch.zeros((), dtype=torch.float64)  # rescale: L1 summed in float64, rounded after
    for start, stop in _cache_blocks(numel):
        bits = _magnitude_bits(base, other, start, stop, dtype)
        if rescale:
            wide_sum += _float64_l1(base, other, start, stop, dtype, bits)
        high += torch.bincount(bits.bitwise_right_shift_(16), minlength=_HIGH)
        release(start, stop)
    from_top = high.flip(0).cumsum(0)
    cut_high = _HIGH - 1 - int(torch.searchsorted(from_top, keep))
    above_high = int(from_top[_HIGH - 2 - cut_high]) if cut_high < _HIGH - 1 else 0
    top = _last_nonzero(high)  # the largest magnitude is below the next high bin's first pattern
    largest = float(torch.tensor([min(top + 1, _HIGH - 1) << 16], dtype=torch.int32).view(torch.float32))
    return _HighCut(keep, cut_high, above_high, int(high[cut_high]), largest if top < 0x7F80 else math.inf,
                    wide_sum)


def _radix_trim(base: torch.Tensor, other: torch.Tensor, keep: int, dtype: torch.dtype, rescale: bool,
                release: Release) -> MagnitudeTrim:
    """float32 magnitudes (float64 ones rounded to float32, as mergekit compares them):
    a histogram of the high halves of their bit patterns finds the cut-off's high half,
    a second one of the low halves within that high half finds the cut-off itself."""
    high_cut = _high_cut(base, other, keep, dtype, rescale, release)
    lowest = high_cut.lowest
    low = torch.zeros(_LOW + 1, dtype=torch.int64)  # [0]: below the bin, [1 + i]: pattern lowest + i
    for start, stop in _cache_blocks(base.numel()):
        bits = _magnitude_bits(base, other, start, stop, dtype)
        bits.clamp_(lowest - 1, lowest + _LOW - 1).sub_(lowest - 1)
        low += torch.bincount(bits, minlength=_LOW + 1)
        release(start, stop)
    low[_LOW] -= high_cut.above_high  # patterns above the bin were clamped into its top
    trim = high_cut.trim(low[1:])
    if rescale and trim.threshold > 0:
        trim.scale = _rescale_factor(high_cut.wide_sum.to(dtype), _kept_l1(base, other, trim, release).to(dtype))
    return trim


class _PendingCut:
    """A float32 trim known after the first histogram pass only, for the two-model TIES walk
    (no rescale): the walk drops the magnitudes below the cut-off's high bin and keeps the
    bin's own, undecided; ``_pair_ties`` notes where they are and afterwards, the exact
    cut-off found from them (``settle``), merges those positions again. That saves the
    second pass over the inputs; the bin holds about one element in a hundred."""

    scale = None

    def __init__(self, high_cut: _HighCut):
        self.high_cut = high_cut
        self.largest = high_cut.largest
        self.floor = float(torch.tensor([high_cut.lowest], dtype=torch.int32).view(torch.float32))
        self.final: MagnitudeTrim | None = None

    def pass_(self) -> "_PendingCut":
        return self

    def undecided(self, delta: torch.Tensor) -> torch.Tensor:
        """Where the magnitude lies in the cut-off's high bin."""
        high = torch.bitwise_and(delta.view(torch.int32), 0x7FFFFFFF).bitwise_right_shift_(16)
        return high == self.high_cut.cut_high

    def __call__(self, delta: torch.Tensor) -> None:
        _zero_below(delta, self.floor)

    def settle(self, deltas: torch.Tensor) -> MagnitudeTrim:
        """The exact trim from the task vector at every position it left undecided (and
        maybe others), in flat order."""
        bits = torch.bitwise_and(deltas.view(torch.int32), 0x7FFFFFFF)
        inside = bits[bits.bitwise_right_shift(16) == self.high_cut.cut_high] - self.high_cut.lowest
        self.final = self.high_cut.trim(torch.bincount(inside, minlength=_LOW))
        return self.final

    def resolved(self) -> MagnitudeTrim:
        return self.final


def _last_nonzero(counts: torch.Tensor) -> int:
    """The index of the last nonzero count (0 if none)."""
    present = counts.nonzero()
    return int(present[-1]) if len(present) else 0


def _magnitude_bits(base: torch.Tensor, other: torch.Tensor, start: int, stop: int,
                    dtype: torch.dtype) -> torch.Tensor:
    """|other - base| over [start, stop) as float32, in the working dtype's arithmetic, viewed
    as int32 (ordered as the magnitudes are)."""
    if dtype == torch.float32:
        delta = torch.sub(other[start:stop].float(), base[start:stop].float())
    else:
        delta = (other[start:stop].to(dtype) - base[start:stop].to(dtype)).float()
    return delta.abs_().view(torch.int32)


def _float64_l1(base, other, start, stop, dtype, bits) -> torch.Tensor:
    """The L1 of [start, stop): from the float32 magnitudes (float32 merges) or recomputed in
    float64 (float64 merges, whose magnitudes ``bits`` holds rounded)."""
    if dtype == torch.float32:
        return bits.view(torch.float32).double().sum()
    return (other[start:stop].double() - base[start:stop].double()).abs_().sum()


def _rescale_factor(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor | None:
    """before / after, or None (no rescale) when either L1 is below mergekit's 1e-7."""
    return before / after if before >= 1e-7 and after >= 1e-7 else None


def _kept_l1(base: torch.Tensor, other: torch.Tensor, trim: MagnitudeTrim, release: Release) -> torch.Tensor:
    """L1 of the trimmed task vector, summed in float64 (one more pass, for rescale only)."""
    total = torch.zeros((), dtype=torch.float64)
    walk = trim.pass_()
    for start, stop in _chunks(base.numel()):
        delta = other[start:stop].double() - base[start:stop].double()
        walk(delta)
        total += delta.abs().sum()
        release(start, stop)
    return total


_BIT_COMPARED = (torch.float32, torch.bfloat16, torch.float16)  # float64 is compared rounded to float32


def _zero_below(delta: torch.Tensor, threshold: float) -> None:
    """Zero, in place, every element with |x| < threshold (a magnitude of this dtype).

    hardshrink zeroes |x| <= lambd in one fast pass; with lambd the dtype's next value
    below the threshold that is exactly |x| < threshold. (float64: mergekit compares
    float32-rounded magnitudes, so do the same, more slowly.)"""
    if delta.dtype not in _BIT_COMPARED:
        delta.mul_(delta.abs().float() >= threshold)
        return
    bits = torch.tensor([threshold], dtype=delta.dtype).view(SAME_WIDTH_INT[delta.dtype])
    below = float((bits - 1).view(delta.dtype))
    torch.hardshrink(delta, below, out=delta)


def _zero_at_most(delta: torch.Tensor, threshold: float) -> None:
    """Zero, in place, every element with |x| <= threshold."""
    if delta.dtype not in _BIT_COMPARED:
        delta.mul_(delta.abs().float() > threshold)
        return
    torch.hardshrink(delta, threshold, out=delta)


def _magnitudes_equal(delta: torch.Tensor, threshold: float) -> torch.Tensor:
    """Where |x| == threshold; compared as bit patterns without the sign bit (several times
    faster than a float comparison in bfloat16)."""
    if delta.dtype not in _BIT_COMPARED:
        return delta.abs().float() == threshold
    integer = SAME_WIDTH_INT[delta.dtype]
    pattern = int(torch.tensor(threshold, dtype=delta.dtype).view(integer))
    return torch.bitwise_and(delta.view(integer), (1 << (8 * delta.dtype.itemsize - 1)) - 1) == pattern


def task_arithmetic(base: torch.Tensor, others: Sequence[torch.Tensor], weights: Sequence[float],
                    densities: Sequence[float], dtype: torch.dtype, *, sign_consensus: bool,
                    sparsify: bool, normalize: bool, lambda_: float = 1.0, rescale: bool = False,
                    release: Release = _keep, trust: bool = True) -> torch.Tensor:
    """Task vectors (other - base), magnitude-trimmed to ``density`` when ``sparsify``,
    weighted, with TIES' sign election ('sum': the sign of the weighted sum) and disjoint
    mean when ``sign_consensus``, divided by the summed weights when ``normalize``, scaled
    by ``lambda_`` and added back to the base. ties = sparsify + sign_consensus.

    With ``trust``, a trim that the first chunk says keeps every nonzero element is
    checked by the walk itself (``_NonzeroCount``); where the check fails the tensor is
    merged again without trust, so the result is always the one the trims give."""
    numel = base.numel()
    if numel == 0:
        return torch.empty(0, dtype=dtype)
    trimmed = sparsify and all(density < 1 for density in densities)
    if trimmed and _unchanged(base, others, release):
        return _base_plus_zero(base, dtype, lambda_, release)
    fold = trust and sign_consensus and len(others) == 2 and dtype == torch.float32 and not rescale
    trims = [_trim_or_count(base, other, density, dtype, rescale, release, trust, fold)
             if sparsify and density < 1 else None for other, density in zip(others, densities)]
    if all(isinstance(trim, MagnitudeTrim) and trim.threshold == 0 and trim.ties == numel for trim in trims):
        return _base_plus_zero(base, dtype, lambda_, release)
    walks = [trim.pass_() if trim is not None else None for trim in trims]

    def again() -> torch.Tensor:
        return task_arithmetic(base, others, weights, densities, dtype, sign_consensus=sign_consensus,
                               sparsify=sparsify, normalize=normalize, lambda_=lambda_, rescale=rescale,
                               release=release, trust=False)

    weight_column = torch.tensor(list(weights), dtype=dtype).reshape(-1, 1)
    out = torch.empty(numel, dtype=dtype)
    if sign_consensus and _pair_is_finite(trims, weight_column, dtype):
        _pair_ties(base, others, trims, walks, weight_column, dtype, normalize, lambda_, release, out)
        return _checked(out, trims, lambda found: _pair_is_finite(found, weight_column, dtype), again)
    if any(isinstance(trim, _PendingCut) for trim in trims):  # only the pair walk settles them
        return again()
    for start, stop in _cache_blocks(numel):
        b = base[start:stop].to(dtype)
        deltas = torch.empty((len(others), stop - start), dtype=dtype)
        for delta, other, trim, walk in zip(deltas, others, trims, walks):
            torch.sub(other[start:stop].to(dtype), b, out=delta)
            if trim is not None:
                walk(delta)
                if trim.scale is not None:
                    delta.mul_(trim.scale)
        deltas.mul_(weight_column)
        if sign_consensus:
            mixed = disjoint_merge(deltas, weight_column, normalize)
        else:
            mixed = sum_rows(deltas)
            if normalize:
                divisor = weight_column.sum(dim=0)
                divisor.masked_fill_(divisor.abs() < 1e-8, 1)
                mixed /= divisor
        if lambda_ != 1:
            mixed *= lambda_
        torch.add(b, mixed, out=out[start:stop])
        release(start, stop)
    return _checked(out, trims, lambda found: True, again)



def _trim_or_count(base: torch.Tensor, other: torch.Tensor, density: float, dtype: torch.dtype, rescale: bool,
                   release: Release, trust: bool, fold: bool) -> MagnitudeTrim | _NonzeroCount | _PendingCut:
    """magnitude_trim, or with ``trust`` a count for the walk to make where the first chunk
    says the trim keeps every nonzero element, or with ``fold`` (float32, two models, no
    rescale) a cut-off the pair walk settles where magnitude_trim would take two histogram
    passes."""
    keep = _kept_count(density, base.numel())
    nonzero_fraction = _nonzero_fraction(base, other, dtype)
    if trust and nonzero_fraction < keep / base.numel():
        return _NonzeroCount(base.numel(), keep)
    if fold and nonzero_fraction <= _DENSE:
        high_cut = _high_cut(base, other, keep, dtype, False, release)
        if high_cut.cut_high > 0:  # else the cut-off is zero: magnitude_trim's count says so
            return _PendingCut(high_cut)
    return _trim(base, other, keep, nonzero_fraction, dtype, rescale, release)


def _checked(out: torch.Tensor, trims: Sequence[MagnitudeTrim | _NonzeroCount | None],
             fits: Callable[[Sequence[MagnitudeTrim | None]], bool], again: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``out``, if every trim the walk counted keeps every nonzero element after all and
    the trims as found still ``fit`` the way ``out`` was computed; else ``again()``. (Task
    vectors that are all zero go again too, to the base-plus-zero shortcut.)"""
    if not any(isinstance(trim, (_NonzeroCount, _PendingCut)) for trim in trims):
        return out
    found = [trim.resolved() if isinstance(trim, (_NonzeroCount, _PendingCut)) else trim for trim in trims]
    counted_right = all(trim is not None for trim, was in zip(found, trims) if isinstance(was, _NonzeroCount))
    if not counted_right or not fits(found):
        return again()
    if all(trim is not None and trim.threshold == 0 and trim.ties == out.numel() for trim in found):
        return again()
    return out


def _unchanged(base: torch.Tensor, others: Sequence[torch.Tensor], release: Release) -> bool:
    """Whether every input holds the base's very bits and the base is finite, so that every
    task vector is exactly zero (a tensor no fine-tune changed, as the embeddings of LoRA
    experts): a comparison chunk by chunk that stops at the first difference, instead of
    two trims."""
    if any(other.dtype != base.dtype for other in others) or base.dtype not in SAME_WIDTH_INT:
        return False
    integer = SAME_WIDTH_INT[base.dtype]
    for start, stop in _chunks(base.numel()):
        bits = base[start:stop].view(integer)
        same = all(torch.equal(bits, other[start:stop].view(integer)) for other in others)
        if not same or not bool(torch.isfinite(base[start:stop]).all()):
            return False
        release(start, stop)
    return True


def _base_plus_zero(base: torch.Tensor, dtype: torch.dtype, lambda_: float, release: Release) -> torch.Tensor:
    """What the TIES walk gives where every trimmed task vector is zero: the base plus a
    zero, +0 times lambda (so a -0.0 of the base becomes +0.0 as in mergekit)."""
    out = torch.empty(base.numel(), dtype=dtype)
    for start, stop in _chunks(base.numel()):
        torch.add(base[start:stop].to(dtype), 0.0 * lambda_, out=out[start:stop])
        release(start, stop)
    return out


PAIR_BLOCK_BYTES = 128 * 1024  # per row of a block: the pair walk's buffers and inputs stay in a 2 MB L2 cache


def _pair_is_finite(trims: Sequence[MagnitudeTrim | None], weight_column: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether ``PairConsensus`` applies: two trimmed task vectors in a dtype it handles,
    whose weighted (and rescaled) elements and their sums are finite: bounded by the trims'
    largest magnitudes, with room for rounding."""
    if len(trims) != 2 or dtype not in PAIR_DTYPES or any(trim is None for trim in trims):
        return False
    bound = 0.0
    for trim, weight in zip(trims, weight_column[:, 0].tolist()):
        scale = 1.0 if trim.scale is None else abs(float(trim.scale))
        bound += trim.largest * scale * abs(weight)
    return bound < torch.finfo(dtype).max / 4  # NaN and inf compare False


def _pair_ties(base, others, trims, walks, weight_column, dtype, normalize, lambda_, release, out):
    """task_arithmetic's TIES walk for two task vectors through ``PairConsensus``: the same
    operations up to the sign election, each in place on block-sized buffers. Input pages
    are released every ``CACHE_BLOCK`` elements (a system call per input each time)."""
    numel = base.numel()
    weights = weight_column[:, 0].tolist()  # values of the working dtype, exact as Python floats
    block = PAIR_BLOCK_BYTES // dtype.itemsize
    consensus = PairConsensus(weights, dtype, normalize, min(numel, block))
    steps = [(trim.scale, weight if weight != 1 else None) for trim, weight in zip(trims, weights)]
    pending = [trim if isinstance(trim, _PendingCut) else None for trim in trims]
    noted = _Undecided(pending, dtype) if any(pending) else None
    released = 0
    for start, stop in _chunks(numel, block):
        b = base[start:stop].to(dtype)
        deltas = consensus.deltas(stop - start)
        for delta, other in zip(deltas, others):
            torch.sub(other[start:stop].to(dtype), b, out=delta)
        if noted is not None:
            noted.note(start, b, deltas, pending)
        for delta, walk, (scale, weight) in zip(deltas, walks, steps):
            walk(delta)
            if scale is not None:
                delta.mul_(scale)
            if weight is not None:
                delta.mul_(weight)
        if noted is not None:
            noted.note_walked(deltas, pending)  # before the consensus, which reuses the buffers
        mixed = consensus(stop - start)
        if lambda_ != 1:
            mixed *= lambda_
        torch.add(b, mixed, out=out[start:stop])
        if stop - released >= CACHE_BLOCK or stop == numel:
            release(released, stop)
            released = stop
    if noted is not None:
        noted.merge_again(pending, weight_column, steps, normalize, lambda_, out)
    return out


class _Undecided:
    """The positions of a pair walk where a ``_PendingCut`` left an element undecided: the
    base there, the task vector of each pending trim (before its walk) and the other's
    trimmed and weighted one, block by block in flat order. Held in buffers sized once
    from the bins' counts: a few small tensors kept per block would split the heap's
    freed block-sized chunks, and resident memory would grow by a block per block."""

    def __init__(self, pending, dtype: torch.dtype):
        capacity = sum(trim.high_cut.in_bin for trim in pending if trim is not None)
        self.positions = torch.empty(capacity, dtype=torch.int64)
        self.bases = torch.empty(capacity, dtype=dtype)
        self.rows = torch.empty((len(pending), capacity), dtype=dtype)
        self.filled = 0
        self.index = torch.empty(0, dtype=torch.int64)

    def note(self, start: int, b: torch.Tensor, deltas: torch.Tensor, pending) -> None:
        mask = None
        for delta, trim in zip(deltas, pending):
            if trim is not None:
                undecided = trim.undecided(delta)
                mask = undecided if mask is None else mask.logical_or_(undecided)
        self.index = mask.nonzero().reshape(-1)
        section = slice(self.filled, self.filled + self.index.numel())
        torch.add(self.index, start, out=self.positions[section])
        torch.index_select(b, 0, self.index, out=self.bases[section])
        torch.index_select(deltas, 1, self.index, out=self.rows[:, section])
        self.filled = section.stop

    def note_walked(self, deltas: torch.Tensor, pending) -> None:
        section = slice(self.filled - self.index.numel(), self.filled)
        for i, trim in enumerate(pending):
            if trim is None:
                torch.index_select(deltas[i], 0, self.index, out=self.rows[i, section])

    def merge_again(self, pending, weight_column, steps, normalize: bool, lambda_: float,
                    out: torch.Tensor) -> None:
        """Settle each pending cut-off and merge the noted positions again, as the general
        walk does (the same bits as the pair walk where the inputs are finite)."""
        positions = self.positions[:self.filled]  # never empty: a cut-off's bin holds the k-th element
        rows = self.rows[:, :self.filled]
        for row, trim, (_, weight) in zip(rows, pending, steps):
            if trim is not None:
                trim.settle(row).pass_()(row)
                if weight is not None:
                    row.mul_(weight)
        mixed = disjoint_merge(rows, weight_column, normalize)
        if lambda_ != 1:
            mixed *= lambda_
        out[positions] = torch.add(self.bases[:self.filled], mixed)
