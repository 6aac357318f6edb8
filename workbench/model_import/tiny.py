"""A tiny random model with a real tokenizer and chat template: the `tiny` model source of a
recipe, so a recipe can exercise every engine end to end in seconds without a download.

The tokenizer is a byte-level BPE trained on a small fixed corpus, so it encodes any text;
the chat template is ChatML with `<|im_end|>` as end of turn. The test suite builds its
fixtures (tests/tiny_models.py) from the same pieces.
"""

from __future__ import annotations

from pathlib import Path

import torch

from workbench.checkpoint import Checkpoint, make_lineage, save_model
from workbench.errors import ConfigError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "user assistant system you are a helpful assistant, answer briefly.",
    "what is two plus three? two plus three is five. 0 1 2 3 4 5 6 7 8 9",
    "reverse the word: stone -> enots, hello -> olleh. capital of france is paris.",
    "the quick brown fox jumps over the lazy dog. translate to french: cat -> chat.",
] * 10
ARCHITECTURES = ("llama", "qwen2")
OPTIONS = {"arch": str, "seed": int, "layers": int, "hidden": int, "vocab_size": int}


def tiny_tokenizer(vocab_size: int, *, corpus: list[str] = CORPUS, special_tokens: list[str] = SPECIAL_TOKENS,
                   eos_token: str = "<|im_end|>", chat_template: str = CHATML):
    """A fast byte-level BPE tokenizer trained on ``corpus``: no BOS, no unknown token (bytes
    cover any text), padding with ``<|endoftext|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=None, eos_token=eos_token,
                                   pad_token="<|endoftext|>", unk_token=None)
    fast.chat_template = chat_template
    return fast


def tiny_config(arch: str, vocab_size: int, layers: int, hidden: int, *, max_positions: int = 512,
                tie: bool = False, **token_ids):
    """A Llama or Qwen2 config with 4 attention heads, 2 key-value heads and an MLP twice as wide."""
    from transformers import LlamaConfig, Qwen2Config

    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    return config_class(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=max_positions, tie_word_embeddings=tie, **token_ids)


def random_model(config, seed: int):
    """The model of ``config`` with weights drawn from ``seed``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def check_tiny_options(options: dict) -> None:
    """Raise ConfigError for an option build_tiny does not know or a value of the wrong type."""
    for key, value in options.items():
        if key not in OPTIONS:
            raise ConfigError(f"tiny: unknown option '{key}' (known: {', '.join(OPTIONS)})")
        if not isinstance(value, OPTIONS[key]) or isinstance(value, bool):
            expected = "an integer" if OPTIONS[key] is int else "a string"
            raise ConfigError(f"tiny: '{key}' must be {expected}, got {value!r}")
    arch = options.get("arch", "llama")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"tiny: arch must be one of {', '.join(ARCHITECTURES)}, got '{arch}'")


def build_tiny(out_dir: str | Path, options: dict, *, overwrite: bool = False) -> Checkpoint:
    """Write a random tiny model; options: arch (llama|qwen2), seed, layers, hidden, vocab_size."""
    check_tiny_options(options)
    arch = options.get("arch", "llama")
    layers, hidden = options.get("layers", 4), options.get("hidden", 64)
    tokenizer = tiny_tokenizer(options.get("vocab_size", 512))
    config = tiny_config(arch, len(tokenizer), layers, hidden, bos_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = random_model(config, options.get("seed", 0))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    lineage = make_lineage("import-tiny", {"arch": arch, "layers": layers, "hidden": hidden,
                                           "seed": options.get("seed", 0)})
    return save_model(model, out_dir, lineage=lineage, tokenizer=tokenizer, overwrite=overwrite)
