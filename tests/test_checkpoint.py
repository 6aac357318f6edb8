"""The checkpoint layer: lazy reading, streaming atomic writing, fingerprints, tied embeddings."""

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from importlib.metadata import version

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from tests.cli_helpers import REPO_ROOT
from tests.tiny_models import make_checkpoint, make_model
from workbench.checkpoint import (
    INDEX_FILE,
    Checkpoint,
    CheckpointWriter,
    compute_fingerprint,
    make_lineage,
    save_model,
)
from workbench.errors import CheckpointError
from workbench.safetensors_io import PlannedTensor


def test_lazy_listing_matches_safetensors(tiny_llama):
    ckpt = Checkpoint(tiny_llama)
    reference = load_file(tiny_llama / "model.safetensors")
    assert set(ckpt.names()) == set(reference)
    for name, tensor in reference.items():
        info = ckpt.info(name)
        assert info.shape == tuple(tensor.shape)
        assert info.torch_dtype == tensor.dtype
        assert torch.equal(ckpt.read(name), tensor)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_llama_tied", "tiny_qwen2", "tiny_gpt2"])
def test_written_checkpoint_loads_in_transformers(fixture, request):
    path = request.getfixturevalue(fixture)
    ckpt = Checkpoint(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    state = model.state_dict()
    for name in ckpt.names():
        assert torch.equal(state[name], ckpt.read(name)), name
    assert ckpt.config["architectures"] == [type(model).__name__]
    assert (path / "tokenizer.json").exists() and ckpt.chat_template


def test_tied_embeddings_round_trip(tiny_llama_tied, tmp_path):
    ckpt = Checkpoint(tiny_llama_tied)
    assert ckpt.tie_word_embeddings
    assert "lm_head.weight" not in ckpt.names()
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_tied)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    again = save_model(model, tmp_path / "again", lineage=make_lineage("test"))
    assert again.fingerprint() == ckpt.fingerprint()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtype_conversion_on_write(dtype, tmp_path):
    model = make_model("llama", vocab_size=64)
    ckpt = save_model(model, tmp_path / "out", lineage=make_lineage("test"), dtype=dtype)
    for name, tensor in model.state_dict().items():
        assert ckpt.info(name).torch_dtype == dtype
        assert torch.equal(ckpt.read(name), tensor.to(dtype))
    loaded = AutoModelForCausalLM.from_pretrained(ckpt.path)
    assert loaded.dtype == dtype


def test_sharded_write_has_index_and_same_content(tmp_path):
    one = make_checkpoint(tmp_path / "one", seed=3)
    many = make_checkpoint(tmp_path / "many", seed=3, max_shard_bytes=20_000)
    sharded = Checkpoint(many)
    assert len(sharded.shard_files) > 2
    assert sharded.shard_files[0].name == f"model-00001-of-{len(sharded.shard_files):05d}.safetensors"
    index = json.loads((many / INDEX_FILE).read_text())
    assert set(index["weight_map"]) == set(sharded.names())
    assert sharded.fingerprint() == Checkpoint(one).fingerprint()
    model = AutoModelForCausalLM.from_pretrained(many)
    assert torch.equal(model.lm_head.weight, Checkpoint(one).read("lm_head.weight"))


def write_with_config(source: Checkpoint, out, order, max_shard_bytes=None, rewrite_config=None) -> str:
    """Copy ``source`` through a writer given its config, tensors in ``order``; the fingerprint it stored."""
    plan = [PlannedTensor(n, source.info(n).shape, torch.bfloat16) for n in source.names()]
    options = {"max_shard_bytes": max_shard_bytes} if max_shard_bytes else {}
    with CheckpointWriter(out, plan, config=source.config, **options) as writer:
        for name in order:
            writer.write(name, source.read(name))
        if rewrite_config is not None:
            writer.write_json("config.json", rewrite_config)
        return writer.commit(make_lineage("test")).lineage["fingerprint"]


@pytest.mark.parametrize("shards", [None, 20_000])
def test_fingerprint_hashed_while_writing_equals_the_one_read_back(tmp_path, shards):
    source = Checkpoint(make_checkpoint(tmp_path / "source", seed=4))
    in_name_order = sorted(source.names())
    in_reverse = in_name_order[::-1]
    streamed = write_with_config(source, tmp_path / "streamed", in_name_order, shards)
    reread = write_with_config(source, tmp_path / "reread", in_reverse, shards)
    assert streamed == compute_fingerprint(Checkpoint(tmp_path / "streamed"))
    assert reread == compute_fingerprint(Checkpoint(tmp_path / "reread")) == streamed
    assert streamed != source.fingerprint()  # the copies are bfloat16: other bytes, another fingerprint


def test_config_rewritten_after_the_writer_started_is_fingerprinted(tmp_path):
    source = Checkpoint(make_checkpoint(tmp_path / "source", seed=4))
    changed = {**source.config, "rope_theta": 1234.0}
    stored = write_with_config(source, tmp_path / "out", sorted(source.names()), rewrite_config=changed)
    assert stored == compute_fingerprint(Checkpoint(tmp_path / "out"))
    assert stored != write_with_config(source, tmp_path / "plain", sorted(source.names()))


def test_fingerprint_changes_with_content_and_detects_edits(tmp_path):
    a = Checkpoint(make_checkpoint(tmp_path / "a", seed=1))
    b = Checkpoint(make_checkpoint(tmp_path / "b", seed=2))
    assert a.fingerprint() != b.fingerprint()
    cached = a.fingerprint()
    tensors = load_file(a.path / "model.safetensors")
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1
    time.sleep(0.01)
    save_file(tensors, a.path / "model.safetensors", metadata={"format": "pt"})
    assert Checkpoint(a.path).fingerprint() != cached


def test_lineage_records_inputs_and_versions(tiny_llama, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"x": 1}\n')
    lineage = make_lineage("sft", {"lr": 1e-4}, {"base": Checkpoint(tiny_llama), "data": data})
    assert lineage["inputs"]["base"]["fingerprint"] == Checkpoint(tiny_llama).fingerprint()
    assert len(lineage["inputs"]["data"]["fingerprint"]) == 32
    assert lineage["versions"]["torch"] == version("torch")
    assert lineage["kind"] == "sft" and lineage["created_utc"].endswith("Z")
    assert lineage["parameters"] == {"lr": 1e-4}


def test_writer_exception_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    plan = [PlannedTensor("a", (2, 2), torch.float32)]
    with pytest.raises(RuntimeError):
        with CheckpointWriter(out, plan) as writer:
            writer.write("a", torch.ones(2, 2))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused(tiny_llama, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    with pytest.raises(CheckpointError, match="already exists"):
        CheckpointWriter(out, [])


def test_killed_writer_leaves_no_complete_looking_directory(tmp_path):
    """A writer killed with SIGKILL mid-write leaves only a hidden temp dir, never OUT."""
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from workbench.checkpoint import CheckpointWriter
        from workbench.safetensors_io import PlannedTensor
        plan = [PlannedTensor(f"t{{i}}", (256, 256), torch.float32) for i in range(4000)]
        with CheckpointWriter({str(out)!r}, plan) as w:
            for i, p in enumerate(plan):
                w.write(p.name, torch.full((256, 256), float(i)))
                if i == 50:
                    print("writing", flush=True)
            w.write_json("config.json", {{}})
            w.commit()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert leftovers and all(name.startswith(".out.wb-staging-") for name in leftovers)
    # The next writer for the same target cleans up what the dead one left.
    with CheckpointWriter(out, [PlannedTensor("a", (1,), torch.float32)]) as writer:
        writer.write("a", torch.zeros(1))
        writer.write_json("config.json", {"architectures": ["X"]})
        writer.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_replaces_atomically(tmp_path):
    out = make_checkpoint(tmp_path / "m", seed=1)
    first = Checkpoint(out).fingerprint()
    model = make_model("llama", vocab_size=384, seed=9)
    save_model(model, out, lineage=make_lineage("test"), support_from=out, overwrite=True)
    assert Checkpoint(out).fingerprint() != first
    assert (out / "tokenizer.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_copy_of_checkpoint_keeps_fingerprint(tiny_llama, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_llama, copy)
    assert Checkpoint(copy).fingerprint() == Checkpoint(tiny_llama).fingerprint()
