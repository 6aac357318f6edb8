"""GGUF import: the written checkpoint generates exactly what the GGUF-loaded model generates."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.cli_helpers import REPO_ROOT, run_workbench
from tests.tiny_gguf import write_tiny_llama_gguf
from workbench.checkpoint import Checkpoint
from workbench.modeling import build_prompt_ids
from workbench.model_import.gguf import load_gguf

REAL_GGUF = REPO_ROOT / "models/.gguf/SmolLM2-135M-Instruct.Q4_1.gguf"
REAL_CHECKPOINT = REPO_ROOT / "models/smollm2-135m-instruct"
PROMPTS = ["What is the capital of France?", "Write the numbers from 1 to 5."]


def greedy_tokens(model, tokenizer, prompt, n):
    ids = build_prompt_ids(tokenizer, prompt)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id or 0)
    return out[0, ids.shape[1]:].tolist()


def assert_same_greedy_generation(gguf_path, checkpoint_dir, n_tokens):
    gguf_model, gguf_tokenizer = load_gguf(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(checkpoint_dir)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
    for prompt in PROMPTS:
        assert build_prompt_ids(tokenizer, prompt).tolist() == build_prompt_ids(gguf_tokenizer, prompt).tolist()
        expected = greedy_tokens(gguf_model, gguf_tokenizer, prompt, n_tokens)
        assert greedy_tokens(model, tokenizer, prompt, n_tokens) == expected


def test_tiny_gguf_import_matches_gguf_model(tmp_path):
    gguf_path = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "ckpt"
    result = run_workbench("import", "gguf", gguf_path, out)
    assert result.returncode == 0, result.stderr
    ckpt = Checkpoint(out)
    assert ckpt.config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in ckpt.config
    assert ckpt.chat_template and "<|im_start|>" in ckpt.chat_template
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("<|im_end|>")
    assert ckpt.lineage["kind"] == "import-gguf"
    assert ckpt.lineage["inputs"]["gguf"]["path"] == str(gguf_path)
    assert_same_greedy_generation(gguf_path, out, n_tokens=12)


def test_import_refuses_existing_output_unless_overwrite(tmp_path):
    gguf_path = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_workbench("import", "gguf", gguf_path, out)
    assert result.returncode == 2 and "already exists" in result.stderr
    assert (out / "keep.txt").read_text() == "mine"
    # --overwrite replaces only a checkpoint this tool wrote, never a user's folder
    result = run_workbench("import", "gguf", gguf_path, out, "--overwrite")
    assert result.returncode == 2 and "not a workbench output" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    out = tmp_path / "imported"
    assert run_workbench("import", "gguf", gguf_path, out).returncode == 0
    result = run_workbench("import", "gguf", gguf_path, out, "--overwrite", "--dtype", "bfloat16")
    assert result.returncode == 0, result.stderr
    assert {info.dtype for info in Checkpoint(out).tensors.values()} == {"BF16"}


@pytest.mark.skipif(not (REAL_GGUF.exists() and REAL_CHECKPOINT.exists()),
                    reason="the real SmolLM2 GGUF is absent: run scripts/get-smollm2 (scripts/test does)")
def test_real_smollm2_import_matches_gguf_model():
    ckpt = Checkpoint(REAL_CHECKPOINT)
    assert ckpt.lineage["kind"] == "import-gguf"
    assert ckpt.num_layers == 30 and ckpt.vocab_size == 49152 and ckpt.tie_word_embeddings
    assert_same_greedy_generation(REAL_GGUF, REAL_CHECKPOINT, n_tokens=24)
