"""merge.tensors (the in-memory merge a search composes) gives exactly what merge.run writes;
merge.run's attachments land in the checkpoint and its lineage."""

from __future__ import annotations

import pytest
import torch

from tests.merge_fixtures import perturbed_copy
from tests.tiny_models import make_checkpoint
from workbench import merge
from workbench.checkpoint import Checkpoint
from workbench.errors import ConfigError


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge-tensors")
    base = make_checkpoint(root / "base", layers=3, seed=3)
    return {"base": str(base),
            "a": str(perturbed_copy(base, root / "a", seed=1, scale=0.02, dtype=torch.bfloat16)),
            "b": str(perturbed_copy(base, root / "b", seed=2, scale=0.02))}


CONFIGS = {
    "ties-gradient": lambda m: {"merge_method": "ties", "base_model": m["base"],
                                "parameters": {"lambda": [0.5, 1.5, 1.0]},
                                "models": [{"model": m["a"], "parameters": {"weight": 0.7, "density": 0.4}},
                                           {"model": m["b"], "parameters": {"weight": [1.0, 0.2], "density": 0.8}}]},
    "slerp-bf16-out": lambda m: {"merge_method": "slerp", "base_model": m["a"], "parameters": {"t": 0.3},
                                 "out_dtype": "bfloat16", "models": [{"model": m["a"]}, {"model": m["b"]}]},
    "linear": lambda m: {"merge_method": "linear", "models": [{"model": m["a"], "parameters": {"weight": 1}},
                                                               {"model": m["b"], "parameters": {"weight": 3}}]},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_in_memory_tensors_equal_the_written_ones(models, tmp_path, name):
    config = CONFIGS[name](models)
    written = merge.run(config, tmp_path / "out")
    seen = set()
    for tensor_name, tensor in merge.tensors(config):
        expected = written.read(tensor_name)
        assert tensor.dtype == expected.dtype and torch.equal(tensor, expected), tensor_name
        seen.add(tensor_name)
    assert seen == set(written.names())


def test_in_memory_merge_refuses_what_only_mergekit_or_a_lora_merge_can_do(models, tmp_path):
    stock = {"merge_method": "model_stock", "base_model": models["base"],
             "models": [{"model": models["a"]}, {"model": models["b"]}]}
    with pytest.raises(ConfigError, match="in-memory merge needs the native engine"):
        merge.tensors(stock)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    lora = {"merge_method": "linear", "models": [{"model": f"{models['a']}+{tmp_path / 'adapter'}"},
                                                 {"model": models["b"]}]}
    with pytest.raises(ConfigError, match="is a LoRA input"):
        merge.tensors(lora)


def test_attachments_are_committed_with_the_weights(models, tmp_path):
    data = tmp_path / "valid.jsonl"
    data.write_text('{"messages": []}\n')
    extras = merge.Attachments(parameters={"search": {"trial": 3}}, inputs={"objective[0].data": data},
                               files={"trials.csv": "trial\n3\n", "plot.png": b"\x89PNG"})
    out = merge.run(CONFIGS["linear"](models), tmp_path / "out", attachments=extras)
    assert (out.path / "trials.csv").read_text() == "trial\n3\n"
    assert (out.path / "plot.png").read_bytes() == b"\x89PNG"
    assert out.lineage["parameters"]["search"] == {"trial": 3}
    assert out.lineage["parameters"]["method"] == "linear"
    assert out.lineage["inputs"]["objective[0].data"]["path"] == str(data)
    assert out.lineage["inputs"]["models[0]"]["fingerprint"] == Checkpoint(models["a"]).fingerprint()


@pytest.fixture
def intra_op_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("stop_after", [1, None])
def test_parallel_merge_gives_the_same_tensors_and_gives_back_the_threads(models, intra_op_threads, stop_after):
    """Tensors are merged by as many threads as torch's intra-op pool holds, each op
    single-threaded meanwhile: the result is the same whatever the thread count, and the
    pool's size is restored when the merge ends, finished or abandoned."""
    config = CONFIGS["ties-gradient"](models)
    torch.set_num_threads(1)
    serial = dict(merge.tensors(config))
    torch.set_num_threads(3)
    parallel = {}
    for name, tensor in merge.tensors(config):
        parallel[name] = tensor.clone()
        assert torch.get_num_threads() == 1  # while the merge runs
        if len(parallel) == stop_after:
            break
    assert torch.get_num_threads() == 3
    assert parallel and all(torch.equal(parallel[name], serial[name]) for name in parallel)
    if stop_after is None:
        assert parallel.keys() == serial.keys()
