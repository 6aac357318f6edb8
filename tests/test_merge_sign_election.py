"""The TIES sign election / disjoint mean kernel gives the same bits as the literal
formulation of mergekit's arithmetic (below, as the previous native code did it), on
realistic weighted task vectors: stored in bfloat16 / float16 / float32, with exact zeros
(LoRA-merged and bf16 fine-tunes), with equal and opposite elements (sums that are exactly
zero), negative zeros, negative weights and weights that cancel, for two and three models."""

from __future__ import annotations

import pytest
import torch

from workbench.merge.sign_election import PairConsensus, disjoint_merge

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def reference(deltas: torch.Tensor, weight_column: torch.Tensor, normalize: bool) -> torch.Tensor:
    """mergekit's TIES consensus written out plainly: bool masks, reductions, a masked fill."""
    dtype = deltas.dtype
    majority = (deltas.sum(dim=0) >= 0).to(dtype) * 2 - 1
    mask = (deltas.sign() == majority).to(dtype)
    mixed = (deltas * mask).sum(dim=0)
    if not normalize:
        return mixed
    divisor = (weight_column * mask).sum(dim=0)
    divisor[divisor == 0] = 1
    return mixed / divisor


def weighted_deltas(dtype: torch.dtype, weights: list[float], numel: int = 120_000, seed: int = 0) -> torch.Tensor:
    """Task vectors of realistic size (~1e-4 on weights ~0.02), rounded through the stored
    dtype, 60% exact zeros, with planted equal/opposite pairs and negative zeros; weighted
    in the working dtype as task_arithmetic does."""
    generator = torch.Generator().manual_seed(seed)
    base = (0.02 * torch.randn(numel, generator=generator)).to(dtype)
    rows = []
    for _ in weights:
        delta = 1e-4 * torch.randn(numel, generator=generator)
        delta *= torch.rand(numel, generator=generator) >= 0.6
        rows.append((base.float() + delta).to(dtype) - base)
    column = torch.tensor(weights, dtype=dtype).reshape(-1, 1)
    deltas = torch.stack(rows) * column
    if weights[1] != 0:  # weighted elements that cancel or agree exactly
        opposite = torch.rand(numel, generator=generator) < 0.05
        deltas[1, opposite] = -deltas[0, opposite]
        equal = torch.rand(numel, generator=generator) < 0.05
        deltas[1, equal] = deltas[0, equal]
    negative_zero = torch.rand(deltas.shape, generator=generator) < 0.02
    deltas[negative_zero] = -0.0
    return deltas, column


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(actual), nan)
    integer = {torch.float32: torch.int32}.get(expected.dtype, torch.int16)
    mismatched = actual[~nan].view(integer) != expected[~nan].view(integer)
    assert not bool(mismatched.any()), f"{int(mismatched.sum())} elements differ in their bits"


@pytest.mark.parametrize("weights", [[1.0, 0.7], [0.3, -1.0], [1.0, -1.0], [1.0, 0.0], [0.5, 0.3, 0.9],
                                     [1.0, -1.0, 0.25]])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_kernel_equals_plain_reference_bit_for_bit(dtype_name, normalize, weights):
    deltas, column = weighted_deltas(DTYPES[dtype_name], weights)
    zeros = deltas == 0
    assert 0.3 < float(zeros.float().mean()) < 0.9  # exact zeros, as fine-tunes have
    if weights[1] != 0:
        assert bool((deltas[0] + deltas[1] == 0).logical_and(deltas[0] != 0).any())  # zero sums
    expected = reference(deltas, column, normalize)
    assert_same_bits(disjoint_merge(deltas.clone(), column, normalize), expected)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_kernel_equals_reference_on_infinities_and_nan(dtype_name):
    dtype = DTYPES[dtype_name]
    inf, nan = float("inf"), float("nan")
    first = [inf, inf, -inf, nan, 1.0, 0.0, -0.0, -0.0, 2.0, -2.0]
    second = [-inf, 1.0, -1.0, 1.0, nan, -0.0, -0.0, 0.0, -2.0, 2.0]
    deltas = torch.tensor([first, second], dtype=dtype)
    column = torch.tensor([[1.0], [0.5]], dtype=dtype)
    for normalize in (True, False):
        assert_same_bits(disjoint_merge(deltas.clone(), column, normalize), reference(deltas, column, normalize))


@pytest.mark.parametrize("weights", [[1.0, 0.7], [0.3, -1.0], [1.0, -1.0], [1.0, 0.0], [0.0, 0.5], [-0.5, -0.25]])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_pair_consensus_equals_plain_reference_bit_for_bit(dtype_name, normalize, weights):
    """The two-model kernel on bit patterns gives mergekit's bits, on a block shorter than its
    buffers (the last block of a tensor) as on a full one."""
    deltas, column = weighted_deltas(DTYPES[dtype_name], weights)
    expected = reference(deltas, column, normalize)
    weight_values = column[:, 0].tolist()
    for size in (deltas.shape[1], deltas.shape[1] + 999):
        consensus = PairConsensus(weight_values, DTYPES[dtype_name], normalize, size)
        consensus.deltas(deltas.shape[1]).copy_(deltas)
        assert_same_bits(consensus(deltas.shape[1]), expected)
