"""TIES on two models walks through ``PairConsensus`` (bit patterns, in place): the merged
tensor has the same bits as the general walk (``disjoint_merge``, itself pinned to mergekit's
arithmetic), on realistic task vectors with ties at the trim's cut-off, exact zeros and
negative zeros, over several blocks; inputs it cannot take (non-finite, or weights that
could overflow) go the general way."""

from __future__ import annotations

import pytest
import torch

from workbench.merge import methods

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
BITS = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}


def realistic_inputs(dtype: torch.dtype, numel: int = 30_000, seed: int = 0):
    """A base ~N(0, 0.02) with some -0.0, and two fine-tunes whose task vectors (~1e-4, after
    rounding to the stored dtype) are 60% exact zeros, agree or cancel in places."""
    generator = torch.Generator().manual_seed(seed)
    base = 0.02 * torch.randn(numel, generator=generator)
    base[torch.rand(numel, generator=generator) < 0.02] = -0.0
    deltas = 1e-4 * torch.randn(2, numel, generator=generator)
    deltas *= torch.rand(2, numel, generator=generator) >= 0.6
    opposite = torch.rand(numel, generator=generator) < 0.05
    deltas[1, opposite] = -deltas[0, opposite]
    return base.to(dtype), [(base + delta).to(dtype) for delta in deltas]


def merge(base, others, dtype, weights, *, lambda_=1.0, rescale=False, normalize=True, densities=(0.3, 0.2)):
    return methods.task_arithmetic(base, others, weights, list(densities), dtype, sign_consensus=True,
                                   sparsify=True, normalize=normalize, lambda_=lambda_, rescale=rescale)


def general_way(monkeypatch):
    monkeypatch.setattr(methods, "_pair_is_finite", lambda *args: False)


@pytest.fixture
def pair_calls(monkeypatch):
    """How many tensors went through the two-model walk."""
    calls = []
    original = methods._pair_ties

    def counted(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(methods, "_pair_ties", counted)
    return calls


@pytest.mark.parametrize("options", [{}, {"lambda_": 0.6}, {"rescale": True}, {"normalize": False}])
@pytest.mark.parametrize("weights", [[1.0, 0.7], [0.3, -1.0], [1.0, -1.0]])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_two_model_walk_equals_general_walk_bit_for_bit(monkeypatch, pair_calls, dtype_name, weights, options):
    monkeypatch.setattr(methods, "PAIR_BLOCK_BYTES", 14_000)  # several blocks, the last one short
    dtype = DTYPES[dtype_name]
    base, others = realistic_inputs(dtype)
    trim = methods.magnitude_trim(base, others[0], 0.3, dtype)
    if dtype != torch.float32:
        assert trim.ties > trim.ties_kept > 0  # ties cut at the threshold, across blocks
    fast = merge(base, others, dtype, weights, **options)
    assert pair_calls == [1]
    general_way(monkeypatch)
    expected = merge(base, others, dtype, weights, **options)
    assert torch.equal(fast.view(BITS[dtype]), expected.view(BITS[dtype]))


@pytest.mark.parametrize("case", ["inf", "nan", "overflowing-weight"])
def test_inputs_the_pair_walk_cannot_take_go_the_general_way(monkeypatch, pair_calls, case):
    dtype = torch.bfloat16
    base, others = realistic_inputs(dtype)
    weights = [1.0, 0.7]
    if case == "overflowing-weight":  # a weighted element past bfloat16's largest value
        others[1][5] = 3e36
        weights = [1.0, 500.0]
    else:
        others[1][5] = float(case)
    merged = merge(base, others, dtype, weights)
    assert pair_calls == []
    general_way(monkeypatch)
    assert torch.equal(merged.view(torch.int16), merge(base, others, dtype, weights).view(torch.int16))
