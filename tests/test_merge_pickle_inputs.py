"""Pickle weights are refused at every door of a merge, not only where the native engine
reads checkpoints: a slices source and a tokenizer_source handed to mergekit, a model among
'models' when tokenizer_source skips the cross-checks, and a LoRA adapter (peft falls back
to adapter_model.bin). One line naming the file, exit code 2, nothing written, and no
library gets to unpickle anything."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from tests.merge_fixtures import perturbed_copy
from tests.tiny_models import make_checkpoint
from workbench.checkpoint import Checkpoint
from workbench.cli import main


def pickle_only_copy(source, out_dir):
    """The checkpoint at ``source`` with its weights as pytorch_model.bin instead of safetensors."""
    shutil.copytree(source, out_dir)
    checkpoint = Checkpoint(out_dir)
    torch.save({name: checkpoint.read(name) for name in checkpoint.tensors}, out_dir / "pytorch_model.bin")
    for shard in checkpoint.shard_files:
        shard.unlink()
    return out_dir


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    from workbench.modeling import load_model

    root = tmp_path_factory.mktemp("merge-pickles")
    base = make_checkpoint(root / "base", arch="llama", layers=2, seed=13)
    adapter = get_peft_model(load_model(base), LoraConfig(r=2, target_modules=["q_proj"]))
    adapter.save_pretrained(root / "adapter-bin", safe_serialization=False)
    assert not (root / "adapter-bin" / "adapter_model.safetensors").exists()
    return {"base": str(base), "a": str(perturbed_copy(base, root / "a", seed=1, scale=0.01)),
            "pickled": str(pickle_only_copy(base, root / "pickled")),
            "adapter": str(root / "adapter-bin")}


def ties(m, *models, **extra):
    return {"merge_method": "ties", "base_model": m["base"], "parameters": {"weight": 1.0, "density": 0.5},
            "models": [{"model": model} for model in models], **extra}


DOORS = {
    "slices-source": (lambda m: {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": m["a"], "layer_range": [0, 1]}]},
        {"sources": [{"model": m["pickled"], "layer_range": [1, 2]}]}]}, "pickled", "pytorch_model.bin", []),
    "tokenizer-source": (lambda m: ties(m, m["a"], tokenizer_source=m["pickled"], merge_method="dare_ties"),
                         "pickled", "pytorch_model.bin", []),
    "model-with-tokenizer-source": (lambda m: ties(m, m["a"], m["pickled"], tokenizer_source="base"),
                                    "pickled", "pytorch_model.bin", ["--backend", "mergekit"]),
    "lora-native": (lambda m: ties(m, m["a"], f"{m['a']}+{m['adapter']}"), "adapter-bin", "adapter_model.bin",
                    ["--backend", "native"]),
    "lora-mergekit": (lambda m: ties(m, m["a"], f"{m['a']}+{m['adapter']}"), "adapter-bin", "adapter_model.bin",
                      ["--backend", "mergekit"]),
    "lora-in-slices": (lambda m: {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": f"{m['a']}+{m['adapter']}", "layer_range": [0, 2]}]}]},
        "adapter-bin", "adapter_model.bin", []),
}


@pytest.fixture
def nothing_unpickled(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was loaded before the inputs were checked")

    monkeypatch.setattr(torch, "load", refuse)


@pytest.mark.parametrize("door", list(DOORS))
def test_pickle_input_refused_before_any_library_reads_it(inputs, tmp_path, capsys, nothing_unpickled, door):
    make, directory, file_name, options = DOORS[door]
    config_file = tmp_path / "merge.yml"
    config_file.write_text(yaml.safe_dump(make(inputs)))
    with pytest.raises(SystemExit) as exit_info:
        main(["merge", str(config_file), str(tmp_path / "out"), *options])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert f"{directory}: holds only pickle weights ({file_name})" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merge.yml"]
