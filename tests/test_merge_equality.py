"""The native engine against mergekit itself (run_merge) on the same tiny inputs and configs:
every tensor compared, float32 to 1e-6 and bfloat16 to one rounding step."""

from __future__ import annotations

import pytest
import torch

from tests.merge_fixtures import perturbed_copy
from tests.tiny_models import make_checkpoint
from workbench import merge
from workbench.checkpoint import Checkpoint
from workbench.merge import methods


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge-inputs")
    base = make_checkpoint(root / "base", arch="llama", layers=3, hidden=32, seed=3)
    return {
        "base": str(base),
        "a": str(perturbed_copy(base, root / "a", seed=1, scale=0.02)),
        "b": str(perturbed_copy(base, root / "b", seed=2, scale=0.02)),
        "c": str(perturbed_copy(base, root / "c", seed=4, scale=0.03)),
        # So close to the base that every tensor pair is colinear for slerp (|cos| > 0.9995).
        "near": str(perturbed_copy(base, root / "near", seed=5, scale=1e-5)),
    }


def run_mergekit(config: dict, out_dir) -> Checkpoint:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    options = MergeOptions(copy_tokenizer=False, lazy_unpickle=False, cuda=False, quiet=True,
                           write_model_card=False)
    run_merge(MergeConfiguration.model_validate(config), str(out_dir), options=options)
    return Checkpoint(out_dir)


def bf16_steps(expected: torch.Tensor, actual: torch.Tensor) -> int:
    """How many bfloat16 representable values apart two bfloat16 tensors are, at most."""
    as_int = lambda t: t.view(torch.int16).to(torch.int32)  # noqa: E731 - sign-magnitude bits
    a, b = as_int(expected), as_int(actual)
    a = torch.where(a < 0, -(a & 0x7FFF), a)
    b = torch.where(b < 0, -(b & 0x7FFF), b)
    return int((a - b).abs().max()) if a.numel() else 0


def assert_same_tensors(reference: Checkpoint, native: Checkpoint, ignore=lambda name: None,
                        tolerance: float = 1e-6):
    assert set(native.names()) == set(reference.names())
    for name in reference.names():
        expected, actual = reference.read(name), native.read(name)
        assert actual.dtype == expected.dtype, name
        keep = ignore(name)
        if keep is not None:
            expected, actual = expected[keep], actual[keep]
        if expected.dtype == torch.bfloat16:
            assert bf16_steps(expected, actual) <= 1, name
        else:
            assert (expected.double() - actual.double()).abs().max() <= tolerance, name


def models_with(ids, m, per_model=None):
    return [{"model": m[i], **({"parameters": per_model[k]} if per_model else {})} for k, i in enumerate(ids)]


CASES = {
    "linear-normalized": lambda m: {
        "merge_method": "linear",
        "models": models_with("abc", m, [{"weight": 0.2}, {"weight": 0.5}, {"weight": 0.9}])},
    "linear-raw-gradient": lambda m: {
        "merge_method": "linear", "parameters": {"normalize": False},
        "models": models_with("ab", m, [{"weight": [0.1, 0.9]}, {"weight": [1.0, 0.3, 0.5]}])},
    "slerp-scalar": lambda m: {
        "merge_method": "slerp", "base_model": m["a"], "models": models_with("ab", m),
        "parameters": {"t": 0.3}},
    "slerp-gradient": lambda m: {
        "merge_method": "slerp", "base_model": m["a"], "models": models_with("ab", m),
        "parameters": {"t": [0, 0.5, 0.3, 1]}},
    "slerp-filtered": lambda m: {
        "merge_method": "slerp", "base_model": m["b"], "models": models_with("ab", m),
        "parameters": {"t": [{"filter": "self_attn", "value": [0, 1]}, {"filter": "mlp", "value": [1, 0]},
                             {"value": 0.6}]}},
    "slerp-colinear": lambda m: {
        "merge_method": "slerp", "base_model": m["base"], "models": models_with(["near"], m),
        "parameters": {"t": 0.4}},
    "ties-density-0.5": lambda m: {
        "merge_method": "ties", "base_model": m["base"],
        "models": models_with("ab", m, [{"weight": 1.0, "density": 0.5}, {"weight": 0.6, "density": 0.5}])},
    "ties-three-densities-lambda": lambda m: {
        "merge_method": "ties", "base_model": m["base"], "parameters": {"lambda": 1.3},
        "models": models_with("abc", m, [{"weight": 0.7, "density": 0.2}, {"weight": 0.4, "density": 0.9},
                                         {"weight": [0.2, 1.0], "density": 0.7}])},
    "ties-no-normalize": lambda m: {
        "merge_method": "ties", "base_model": m["base"], "parameters": {"normalize": False, "density": 0.3},
        "models": models_with("ab", m, [{"weight": 0.5}, {"weight": 0.8}])},
    "ties-rescale": lambda m: {
        "merge_method": "ties", "base_model": m["base"], "parameters": {"rescale": True, "density": 0.4},
        "models": models_with("ab", m, [{"weight": 0.5}, {"weight": 0.8}])},
    "task-arithmetic": lambda m: {
        "merge_method": "task_arithmetic", "base_model": m["base"], "parameters": {"lambda": 0.8},
        "models": models_with("ab", m, [{"weight": 0.5}, {"weight": 0.8}])},
}


def magnitude_cutoff_ties(config: dict, dtype: str | None):
    """For ties: the positions where some model's |delta| equals its trim cut-off value.
    There mergekit keeps an arbitrary subset of the tied elements (unstable argsort) and the
    native engine the first ones by index (as many); everywhere else both must agree."""
    if config["merge_method"] != "ties":
        return lambda name: None
    work = getattr(torch, dtype) if dtype else torch.float32
    base = Checkpoint(config["base_model"])

    def ignore(name):
        b = base.read(name).to(work)
        ambiguous = torch.zeros(b.shape, dtype=torch.bool)
        for entry in config["models"]:
            density = entry.get("parameters", {}).get("density", config.get("parameters", {}).get("density", 1))
            if density >= 1:
                continue
            magnitudes = (Checkpoint(entry["model"]).read(name).to(work) - b).abs().float()
            k = max(1, int(density * magnitudes.numel()))
            cutoff = magnitudes.reshape(-1).topk(k).values.min()
            if int((magnitudes == cutoff).sum()) > 1:
                ambiguous |= magnitudes == cutoff
        return ~ambiguous

    return ignore


@pytest.mark.parametrize("dtype", [None, "bfloat16", "float64"])
@pytest.mark.parametrize("case", list(CASES))
def test_native_equals_mergekit(models, tmp_path, case, dtype):
    """float64 merges keep float64 coefficients (weights, t, rescale sums), as mergekit does:
    they agree to 1e-12."""
    config = CASES[case](models)
    if dtype:
        config["dtype"] = dtype
    reference = run_mergekit(config, tmp_path / "mergekit")
    native = merge.run(config, tmp_path / "native", backend="native")
    assert native.lineage["parameters"]["backend"] == "native"
    assert_same_tensors(reference, native, magnitude_cutoff_ties(config, dtype),
                        tolerance=1e-12 if dtype == "float64" else 1e-6)


def test_colinear_case_is_exercised(models):
    """The 'near' model must really take slerp's linear fallback for every tensor."""
    base, near = Checkpoint(models["base"]), Checkpoint(models["near"])
    for name in base.names():
        a, b = base.read(name).reshape(-1), near.read(name).reshape(-1)
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.9995, name


@pytest.mark.parametrize("case", ["linear-normalized", "slerp-gradient", "ties-three-densities-lambda"])
def test_chunked_walk_equals_mergekit(models, tmp_path, monkeypatch, case):
    """Tensors larger than a chunk (here 1000 elements) are merged piecewise: same result."""
    monkeypatch.setattr(methods, "CHUNK", 1000)
    config = CASES[case](models)
    reference = run_mergekit(config, tmp_path / "mergekit")
    native = merge.run(config, tmp_path / "native", backend="native")
    assert_same_tensors(reference, native, magnitude_cutoff_ties(config, None))


def test_out_dtype_and_tied_embeddings(tmp_path):
    """A tied model stays tied (no lm_head written, like mergekit); out_dtype casts the result."""
    base = make_checkpoint(tmp_path / "base", arch="llama", layers=2, tie=True, seed=7)
    a = perturbed_copy(base, tmp_path / "a", seed=1, scale=0.02)
    config = {"merge_method": "ties", "base_model": str(base), "out_dtype": "bfloat16",
              "models": [{"model": str(a), "parameters": {"weight": 1.0, "density": 1.0}}]}
    reference = run_mergekit(config, tmp_path / "mergekit")
    native = merge.run(config, tmp_path / "native")
    assert "lm_head.weight" not in native.names()
    assert set(native.names()) == set(reference.names())
    for name in native.names():
        assert native.info(name).torch_dtype == torch.bfloat16
        assert torch.equal(reference.read(name), native.read(name)), name
