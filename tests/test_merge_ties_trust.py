"""TIES trusts the first chunk where it says a trim keeps every nonzero element: the walk
counts the nonzeros itself (``_NonzeroCount``) instead of a pass before it. The merged
tensor has the same bits as without trust (trims found first, the way pinned to mergekit),
whether the trust was right, or wrong because the first chunk misled (a tensor sparse at its
start only), a task vector is not finite past the first chunk, or every task vector is zero.

float32 pairs likewise fold the trim's second histogram pass into the walk (``_PendingCut``):
the cut-off settled from the elements the walk left undecided is the exact k-th largest
magnitude, with its ties, even where many magnitudes are equal near it."""

from __future__ import annotations

import pytest
import torch

from workbench.merge import methods

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
BITS = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}
NUMEL = 4 * methods._SAMPLE


def inputs(dtype, models, zeros_at_start=0.6, zeros_after=0.6, seed=0):
    """A base ~N(0, 0.02) and fine-tunes with task vectors ~1e-4 whose fraction of exact zeros
    is ``zeros_at_start`` in the first chunk the trim samples and ``zeros_after`` beyond it."""
    generator = torch.Generator().manual_seed(seed)
    base = 0.02 * torch.randn(NUMEL, generator=generator)
    zeros = torch.full((NUMEL,), zeros_after)
    zeros[:methods._SAMPLE] = zeros_at_start
    others = []
    for _ in range(models):
        delta = 1e-4 * torch.randn(NUMEL, generator=generator)
        delta *= torch.rand(NUMEL, generator=generator) >= zeros
        others.append((base + delta).to(dtype))
    return base.to(dtype), others


def merge(base, others, dtype, densities, trust):
    weights = [1.0, 0.7, 0.4][:len(others)]
    return methods.task_arithmetic(base, others, weights, densities, dtype, sign_consensus=True, sparsify=True,
                                   normalize=True, release=lambda start, stop: None, trust=trust)


def assert_same_bits(actual, expected):
    assert torch.equal(actual.view(BITS[actual.dtype]), expected.view(BITS[expected.dtype]))


@pytest.fixture
def merged_again(monkeypatch):
    """How many times a trusting merge had to merge its tensor again without trust."""
    calls = []
    original = methods.task_arithmetic

    def counting(*args, **kwargs):
        calls.append(kwargs.get("trust", True))
        return original(*args, **kwargs)

    monkeypatch.setattr(methods, "task_arithmetic", counting)
    return lambda: calls.count(False)


@pytest.mark.parametrize("models", [2, 3])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_trusted_count_gives_the_same_bits(merged_again, dtype_name, models):
    """Densities above the nonzero fraction (about 0.4): the walk counts, the count agrees."""
    dtype = DTYPES[dtype_name]
    base, others = inputs(dtype, models)
    densities = [0.6, 0.5, 0.7][:models]
    trusted = merge(base, others, dtype, densities, trust=True)
    assert merged_again() == 0
    assert_same_bits(trusted, merge(base, others, dtype, densities, trust=False))


@pytest.mark.parametrize("models", [2, 3])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_misleading_first_chunk_merges_again(merged_again, dtype_name, models):
    """90% zeros in the sampled chunk, 20% after (fewer nonzeros in bfloat16, where many
    task vectors round to zero): density 0.3 looks above the nonzero fraction but is below it, so the trim does cut, and the trusting walk's result is not it."""
    dtype = DTYPES[dtype_name]
    base, others = inputs(dtype, models, zeros_at_start=0.9, zeros_after=0.2)
    densities = [0.3] * models
    trim = methods.magnitude_trim(base, others[0], 0.3, dtype)
    assert trim.threshold > 0  # the trim drops nonzero elements
    trusted = merge(base, others, dtype, densities, trust=True)
    assert merged_again() == 1
    assert_same_bits(trusted, merge(base, others, dtype, densities, trust=False))


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_non_finite_task_vector_past_the_sample_merges_again(merged_again, dtype_name, value):
    """The pair walk is chosen before the count knows the largest magnitude; an infinite or
    NaN task vector element found by the walk sends the tensor the general way."""
    dtype = DTYPES[dtype_name]
    base, others = inputs(dtype, 2)
    others[1][-5] = value
    trusted = merge(base, others, dtype, [0.6, 0.5], trust=True)
    assert merged_again() == 1
    expected = merge(base, others, dtype, [0.6, 0.5], trust=False)
    assert not torch.isfinite(expected[-5])
    assert_same_bits(trusted, expected)


def test_all_zero_task_vectors_take_the_base_plus_zero_way(merged_again):
    """Inputs stored wider than the working dtype that round to the base (so the bit
    comparison does not catch them): every task vector is zero, found only by the count."""
    base, _ = inputs(torch.float32, 0)
    base[::7] = -0.0
    working = base.to(torch.bfloat16)
    others = [working.float(), working.float()]
    trusted = merge(working, others, torch.bfloat16, [0.5, 0.5], trust=True)
    assert merged_again() == 1
    assert_same_bits(trusted, merge(working, others, torch.bfloat16, [0.5, 0.5], trust=False))
    assert not torch.signbit(trusted[::7]).any()  # base -0.0 plus zero is +0.0, as in mergekit


def tied_float32_pair(numel=200_000, seed=0):
    """A base ~N(0, 0.02) on a coarse grid and two task vectors, 60% zeros, whose nonzero
    magnitudes take 40 neighbouring float32 values (one high half of the bit pattern), so
    the cut-off's bin holds every nonzero element and thousands tie at the cut-off."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.round(0.02 * torch.randn(numel, generator=generator) * 2**12) / 2**12
    others = []
    for _ in range(2):
        patterns = 0x3A800000 + torch.randint(0, 40, (numel,), generator=generator, dtype=torch.int32)
        delta = patterns.view(torch.float32) * torch.where(torch.rand(numel, generator=generator) < 0.5, -1, 1)
        delta *= torch.rand(numel, generator=generator) >= 0.6
        others.append(base + delta)
    return base, others


@pytest.fixture
def settled(monkeypatch):
    """The trims the walk settled."""
    trims = []
    original = methods._PendingCut.settle

    def noting(self, deltas):
        trims.append(original(self, deltas))
        return trims[-1]

    monkeypatch.setattr(methods._PendingCut, "settle", noting)
    return trims


@pytest.mark.parametrize("block_bytes", [methods.PAIR_BLOCK_BYTES, 4096])
@pytest.mark.parametrize("densities", [(0.2, 0.1), (0.3, 0.05), (0.2, 0.9)])
def test_folded_cutoff_is_the_exact_kth_largest(monkeypatch, settled, densities, block_bytes):
    """... for both task vectors, or one (density 0.9 keeps every nonzero element: counted; weighted 0.7, so the walked values differ from the raw ones)."""
    monkeypatch.setattr(methods, "PAIR_BLOCK_BYTES", block_bytes)
    base, others = tied_float32_pair()
    folded = merge(base, others, torch.float32, list(densities), trust=True)
    folded_ones = [(other, density) for other, density in zip(others, densities) if density < 0.4]
    assert len(settled) == len(folded_ones)
    for trim, (other, density) in zip(settled, folded_ones):
        magnitudes = (other - base).abs()
        k = int(density * base.numel())
        kth = float(magnitudes.sort(descending=True).values[k - 1])
        assert trim.threshold == kth
        assert trim.ties == int((magnitudes == kth).sum()) > 1000
        assert trim.ties_kept == k - int((magnitudes > kth).sum())
    assert_same_bits(folded, merge(base, others, torch.float32, list(densities), trust=False))


def test_folded_cutoff_with_a_non_finite_task_vector_merges_again(merged_again):
    """An infinite task vector element: the pair walk cannot take the tensor, and only the
    pair walk settles a folded cut-off, so the tensor is merged again with its trims found."""
    base, others = tied_float32_pair()
    others[0][-3] = float("inf")
    folded = merge(base, others, torch.float32, [0.2, 0.1], trust=True)
    assert merged_again() == 1
    assert_same_bits(folded, merge(base, others, torch.float32, [0.2, 0.1], trust=False))
