"""TIES' magnitude trim on realistic task vectors: base weights ~N(0, 0.02) and fine-tune
deltas ~1e-4, stored in bfloat16 / float16 (where deltas take few distinct values, so many
magnitudes tie at the cut-off) and float32, dense or 70% exact zeros. The native trim keeps
exactly k = int(density * numel) elements, like mergekit, choosing among ties by index."""

from __future__ import annotations

import pytest
import torch

from tests.merge_fixtures import perturbed_copy
from tests.test_merge_equality import assert_same_tensors, magnitude_cutoff_ties, run_mergekit
from tests.tiny_models import make_checkpoint
from workbench import merge
from workbench.checkpoint import Checkpoint
from workbench.merge import methods

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def realistic_pair(dtype: torch.dtype, zero_fraction: float, numel: int = 200_000, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    base = (0.02 * torch.randn(numel, generator=generator)).to(dtype)
    delta = 1e-4 * torch.randn(numel, generator=generator)
    delta *= torch.rand(numel, generator=generator) >= zero_fraction
    return base, (base.float() + delta).to(dtype)


def trimmed(base, other, density, dtype):
    trim = methods.magnitude_trim(base, other, density, dtype)
    delta = other.to(dtype) - base.to(dtype)
    walk = trim.pass_()
    for start, stop in methods._chunks(delta.numel()):
        walk(delta[start:stop])
    return trim, delta


@pytest.mark.parametrize("cache_block", [methods.CACHE_BLOCK, 10_000])
@pytest.mark.parametrize("chunk", [methods.CHUNK, 7_000])
@pytest.mark.parametrize("zero_fraction,density", [(0.0, 0.2), (0.0, 0.5), (0.05, 0.5), (0.7, 0.1), (0.7, 0.2)])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_trim_keeps_exactly_k_like_mergekit(monkeypatch, dtype_name, zero_fraction, density, chunk, cache_block):
    """... with the walk in chunks that do or do not line up with the histogram's blocks,
    whose per-block counts (several blocks) tell where the kept ties end."""
    from mergekit.sparsify import magnitude

    monkeypatch.setattr(methods, "CHUNK", chunk)
    monkeypatch.setattr(methods, "CACHE_BLOCK", cache_block)
    dtype = DTYPES[dtype_name]
    base, other = realistic_pair(dtype, zero_fraction)
    trim, kept = trimmed(base, other, density, dtype)
    k = int(density * base.numel())
    assert trim.threshold > 0  # so every kept element is nonzero and counting nonzeros counts them
    if dtype != torch.float32:
        assert trim.ties > trim.ties_kept > 0  # the case that matters: ties cut at the threshold
        tied = (other - base).abs().float() == trim.threshold
        ties_through = torch.stack([part.sum() for part in tied.split(min(chunk, cache_block))]).cumsum(0)
        whole = int((ties_through <= trim.ties_kept).sum())  # leading histogram blocks whose ties are all kept
        assert trim.ties_kept_until == whole * min(chunk, cache_block)
    reference = magnitude(other - base, density)
    assert int(kept.count_nonzero()) == int(reference.count_nonzero()) == k
    # Kept values are the task vector's own, and agree with mergekit off the cut-off value.
    delta = other - base
    survivors = kept != 0
    assert torch.equal(kept[survivors], delta[survivors])
    off_cutoff = delta.abs().float() != trim.threshold
    assert torch.equal(kept[off_cutoff], reference[off_cutoff])
    # Among the ties, the first ones by flat index survive.
    tied = (delta.abs().float() == trim.threshold).nonzero().reshape(-1)
    assert survivors[tied[:trim.ties_kept]].all() and not survivors[tied[trim.ties_kept:]].any()


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
def test_trim_with_rescale_uses_the_kept_set(dtype_name):
    """rescale's factor is L1(task vector) / L1(exactly the k kept elements)."""
    dtype = DTYPES[dtype_name]
    base, other = realistic_pair(dtype, 0.0)
    trim = methods.magnitude_trim(base, other, 0.2, dtype, rescale=True)
    _, kept = trimmed(base, other, 0.2, dtype)
    delta = other - base
    expected = delta.abs().float().sum().to(dtype) / kept.abs().float().sum().to(dtype)
    assert trim.scale == expected


@pytest.fixture(scope="module")
def realistic_models(tmp_path_factory):
    """A bf16 base and bf16 fine-tunes of it: one dense, one with 70% exact-zero deltas."""
    root = tmp_path_factory.mktemp("ties-realistic")
    base = make_checkpoint(root / "base", arch="llama", layers=2, hidden=64, seed=11, dtype=torch.bfloat16)
    return {
        "base": str(base),
        "dense": str(perturbed_copy(base, root / "dense", seed=1, scale=1e-4)),
        "sparse": str(perturbed_copy(base, root / "sparse", seed=2, scale=1e-4, zero_fraction=0.7)),
    }


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("expert", ["dense", "sparse"])
def test_single_expert_changes_as_many_elements_as_mergekit(realistic_models, tmp_path, expert, dtype):
    """One expert, weight 1: the merge is base + trimmed task vector, so the elements that
    differ from the base are the kept ones; their count per tensor equals mergekit's."""
    m = realistic_models
    config = {"merge_method": "ties", "base_model": m["base"], "dtype": dtype,
              "models": [{"model": m[expert], "parameters": {"weight": 1.0, "density": 0.2}}]}
    reference = run_mergekit(config, tmp_path / "mergekit")
    native = merge.run(config, tmp_path / "native", backend="native")
    base = Checkpoint(m["base"])
    ties_somewhere = False
    for name in base.names():
        b = base.read(name).to(getattr(torch, dtype))
        expected, actual = reference.read(name), native.read(name)
        assert int((actual != b).sum()) == int((expected != b).sum()), name
        delta = Checkpoint(m[expert]).read(name).to(b.dtype) - b
        k = max(1, int(0.2 * b.numel()))
        cutoff = delta.abs().float().reshape(-1).topk(k).values.min()
        ties_somewhere |= cutoff > 0 and int((delta.abs().float() == cutoff).sum()) > k - int(
            (delta.abs().float() > cutoff).sum())
        if cutoff > 0:
            assert int((actual != b).sum()) == k, name
    assert ties_somewhere


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("rescale", [False, True])
def test_realistic_ties_equals_mergekit_off_the_cutoff(realistic_models, tmp_path, dtype, rescale):
    m = realistic_models
    config = {"merge_method": "ties", "base_model": m["base"], "dtype": dtype,
              "parameters": {"rescale": rescale, "lambda": 1.0},
              "models": [{"model": m["dense"], "parameters": {"weight": 0.7, "density": 0.2}},
                         {"model": m["sparse"], "parameters": {"weight": 0.5, "density": 0.1}}]}
    reference = run_mergekit(config, tmp_path / "mergekit")
    native = merge.run(config, tmp_path / "native", backend="native")
    if dtype == "bfloat16":
        assert_same_tensors(reference, native, magnitude_cutoff_ties(config, dtype))
    else:
        ignore = magnitude_cutoff_ties(config, dtype)
        for name in reference.names():
            keep = ignore(name)
            assert torch.equal(reference.read(name)[keep], native.read(name)[keep]), name


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_cutoff_at_zero_keeps_every_nonzero_delta(dtype_name):
    """Density above the nonzero fraction: the k-th largest magnitude is 0, so every nonzero
    element survives (which zeros count as "kept" changes nothing), as in mergekit."""
    from mergekit.sparsify import magnitude

    dtype = DTYPES[dtype_name]
    base, other = realistic_pair(dtype, 0.7)
    trim, kept = trimmed(base, other, 0.5, dtype)
    delta = other - base
    assert trim.threshold == 0 and trim.ties_kept == int(0.5 * base.numel()) - int(delta.count_nonzero())
    assert torch.equal(kept, delta)
    assert torch.equal(kept, magnitude(delta, 0.5))


@pytest.mark.parametrize("way", ["radix", "selection"])
@pytest.mark.parametrize("case", ["shared-high-halves", "subnormals-at-zero-cutoff", "ties-across-chunks"])
def test_float32_cutoff_is_the_exact_kth_largest(monkeypatch, case, way):
    """The float32 cut-off, from two histograms (high halves of the bit patterns, then low
    halves within the cut-off's high half) or by selection in place (task vectors with few
    zeros), is the exact k-th largest magnitude, with its tie count, where many magnitudes
    share their high half, where the cut-off's bin also holds zeros and subnormals, and
    where tied values are spread over chunks."""
    monkeypatch.setattr(methods, "CHUNK", 1000)
    monkeypatch.setattr(methods, "CACHE_BLOCK", 1000)
    monkeypatch.setattr(methods, "_DENSE", 1.0 if way == "radix" else -1.0)
    monkeypatch.setattr(methods, "_SAMPLE", 1)  # the first element is nonzero: no shortcut by counting
    generator = torch.Generator().manual_seed(4)
    numel, density = 10_500, 0.3
    base = torch.zeros(numel)
    if case == "shared-high-halves":  # one high half, low halves 0..999: the second histogram decides
        pattern = torch.tensor([0x3A800000], dtype=torch.int32) + torch.randint(0, 1000, (numel,), generator=generator)
        other = pattern.to(torch.int32).view(torch.float32) * torch.where(torch.rand(numel, generator=generator) < 0.5, -1, 1)
    elif case == "subnormals-at-zero-cutoff":  # 80% zeros, a few subnormals, the k-th largest is 0
        other = torch.randn(numel, generator=generator) * 1e-4
        other[torch.rand(numel, generator=generator) < 0.8] = 0
        other[:50] = torch.tensor([1e-41, -3e-42] * 25)
    else:  # four values repeated: ties at the cut-off in every chunk
        other = torch.tensor([1e-4, -2e-4, 3e-4, -1e-4])[torch.randint(0, 4, (numel,), generator=generator)]
    trim = methods.magnitude_trim(base, other, density, torch.float32)
    magnitudes = other.abs()
    k = int(density * numel)
    kth = float(magnitudes.topk(k).values.min())
    assert trim.threshold == kth
    assert trim.ties == int((magnitudes == kth).sum())
    assert trim.ties_kept == k - int((magnitudes > kth).sum())
    assert trim.largest >= float(magnitudes.max())
    _, kept = trimmed(base, other, density, torch.float32)
    assert int(kept.count_nonzero()) == min(k, int(other.count_nonzero()))


def unchanged_by_lora(name: str) -> bool:
    """Tensors a LoRA fine-tune on the projections leaves as they were."""
    return "embed" in name or "norm" in name or "lm_head" in name


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("lambda_", [1.0, 0.5, -1.0])
def test_tensors_no_expert_changed_equal_mergekit_bit_for_bit(tmp_path, dtype, lambda_):
    """LoRA-like experts (embeddings and norms identical to the base): such tensors come out
    as mergekit's, base + (+0 * lambda) bit for bit, -0.0 elements of the base included."""
    torch_dtype = DTYPES[dtype]
    made = make_checkpoint(tmp_path / "made", arch="llama", layers=2, hidden=64, seed=5, dtype=torch_dtype)

    def signed_zeros(name, tensor):
        tensor = tensor.clone()
        tensor.view(-1)[::7] = -0.0
        tensor.view(-1)[3::7] = 0.0
        return tensor

    base = perturbed_copy(made, tmp_path / "base", seed=0, scale=0.0, transform=signed_zeros)
    base_tensors = Checkpoint(base)

    def lora_like(name, tensor):
        return base_tensors.read(name) if unchanged_by_lora(name) else tensor

    experts = [perturbed_copy(base, tmp_path / f"expert{i}", seed=i + 1, scale=1e-3, transform=lora_like)
               for i in range(2)]
    config = {"merge_method": "ties", "base_model": str(base), "dtype": dtype,
              "parameters": {"lambda": lambda_, "density": 0.5},
              "models": [{"model": str(e), "parameters": {"weight": w}} for e, w in zip(experts, (1.0, 0.7))]}
    reference = run_mergekit(config, tmp_path / "mergekit")
    native = merge.run(config, tmp_path / "native", backend="native")
    bits = {torch.bfloat16: torch.int16, torch.float32: torch.int32}[torch_dtype]
    unchanged = [name for name in reference.names() if unchanged_by_lora(name)]
    assert unchanged
    for name in unchanged:
        expected, actual = reference.read(name), native.read(name)
        assert (base_tensors.read(name).view(bits) == torch.tensor(-0.0, dtype=torch_dtype).view(bits)).any()
        assert torch.equal(actual.view(bits), expected.view(bits)), name


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_unchanged_tensor_skips_the_trims_unless_the_base_is_not_finite(monkeypatch, dtype_name):
    """Experts holding the base's very bits: the result is base + 0 * lambda without trimming;
    with an infinite base element the task vector there is inf - inf = NaN, so it is trimmed
    and merged as any other (NaN comes out where mergekit's arithmetic gives NaN)."""
    dtype = DTYPES[dtype_name]
    trims = []
    original = methods._trim_or_count  # each task vector's trim (or the count standing for it)
    monkeypatch.setattr(methods, "_trim_or_count", lambda *args, **kw: trims.append(1) or original(*args, **kw))
    base, _ = realistic_pair(dtype, 0.0, numel=5_000)
    base[::7] = -0.0

    def merged():
        return methods.task_arithmetic(base, [base.clone(), base.clone()], [1.0, 0.7], [0.5, 0.5], dtype,
                                       sign_consensus=True, sparsify=True, normalize=True, lambda_=-1.0)

    bits = {torch.float32: torch.int32}.get(dtype, torch.int16)
    assert torch.equal(merged().view(bits), (base + (-0.0)).view(bits)) and not trims
    base[3] = float("inf")
    result = merged()
    # Trimmed twice over: the walk's count of nonzeros meets the NaN, so the tensor is merged
    # again with its trims found first.
    assert len(trims) == 4 and bool(torch.isnan(result[3]))


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("head", ["sparse", "dense"])
def test_a_first_chunk_unlike_the_rest_changes_only_the_way_the_cutoff_is_found(monkeypatch, dtype_name, head):
    """The first chunk's nonzero fraction picks which way the cut-off is looked for first (a
    count of nonzeros, or histograms); a first chunk unlike the rest of the tensor still
    gives the exact k-th largest magnitude."""
    from mergekit.sparsify import magnitude

    monkeypatch.setattr(methods, "_SAMPLE", 1000)
    dtype = DTYPES[dtype_name]
    generator = torch.Generator().manual_seed(5)
    numel = 20_000
    base = (0.02 * torch.randn(numel, generator=generator)).to(dtype)
    step = 1e-4 * torch.randn(numel, generator=generator)
    if head == "sparse":  # looks sparser than it is: the count finds too many nonzeros
        step[:1000] = 0
    else:  # looks denser than it is: 90% zeros after the first chunk, the cut-off at zero
        step[1000:] *= torch.rand(numel - 1000, generator=generator) < 0.1
    other = (base.float() + step).to(dtype)
    delta = other - base
    k = int(0.5 * delta.numel())
    magnitudes = delta.abs().float()
    kth = float(magnitudes.topk(k).values.min())
    trim, kept = trimmed(base, other, 0.5, dtype)
    assert (kth > 0) == (head == "sparse")
    assert trim.threshold == kth and trim.ties_kept == k - int((magnitudes > kth).sum())
    assert int(kept.count_nonzero()) == int(magnitude(delta, 0.5).count_nonzero())


@pytest.mark.parametrize("way", ["radix", "selection"])
def test_float32_rescale_is_l1_over_the_kept_l1(monkeypatch, way):
    """rescale's factor on float32 task vectors, by either way of finding the cut-off:
    L1(task vector) / L1(exactly the k kept elements), to float32 rounding."""
    monkeypatch.setattr(methods, "_DENSE", 1.0 if way == "radix" else -1.0)
    base, other = realistic_pair(torch.float32, 0.7)
    trim = methods.magnitude_trim(base, other, 0.2, torch.float32, rescale=True)
    _, kept = trimmed(base, other, 0.2, torch.float32)
    delta = other - base
    expected = delta.abs().double().sum() / kept.abs().double().sum()
    assert trim.scale is not None and abs(float(trim.scale) / float(expected) - 1) < 1e-6
