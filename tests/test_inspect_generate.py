"""`workbench inspect` and `workbench generate` on tiny checkpoints."""

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.cli_helpers import run_workbench
from workbench.checkpoint import Checkpoint
from workbench.modeling import generate_text, load_model, load_tokenizer


def test_inspect_json_describes_checkpoint(tiny_llama_tied):
    result = run_workbench("inspect", tiny_llama_tied, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_tied)
    assert info["architecture"] == "LlamaForCausalLM"
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["layers"] == model.config.num_hidden_layers
    assert info["vocab_size"] == model.config.vocab_size
    assert info["tied_embeddings"] is True
    assert info["chat_template"] is True
    assert info["dtypes"] == {"F32": info["parameters"]}
    assert info["shards"] == [{"file": "model.safetensors",
                               "bytes": (tiny_llama_tied / "model.safetensors").stat().st_size}]
    assert info["fingerprint"] == Checkpoint(tiny_llama_tied).fingerprint()
    assert info["lineage"]["kind"] == "test-fixture"


def test_inspect_text_is_readable(tiny_gpt2):
    result = run_workbench("inspect", tiny_gpt2)
    assert result.returncode == 0, result.stderr
    assert "GPT2LMHeadModel" in result.stdout and "tied embedding yes" in result.stdout
    assert "made by        test-fixture" in result.stdout


def test_generate_greedy_equals_transformers(tiny_qwen2):
    result = run_workbench("generate", tiny_qwen2, "--prompt", "hello", "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.endswith("<|assistant|>\n")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    assert result.stdout.strip() == expected.replace("\r", "\n")  # text-mode pipes turn \r into \n


def test_generate_sampling_is_seeded(tiny_llama):
    model, tokenizer = load_model(tiny_llama), load_tokenizer(tiny_llama)

    def sample(seed):
        return generate_text(model, tokenizer, "hi", max_new_tokens=12, temperature=1.5, seed=seed)

    greedy = generate_text(model, tokenizer, "hi", max_new_tokens=12)
    assert sample(1) == sample(1)
    assert len({sample(1), sample(2), sample(3), greedy}) > 1


def test_help_fits_one_screen():
    for args in (["--help"], ["inspect", "--help"], ["generate", "--help"], ["import", "gguf", "--help"]):
        result = run_workbench(*args)
        assert result.returncode == 0
        assert len(result.stdout.splitlines()) <= 40
