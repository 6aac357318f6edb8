"""A tiny random model with a real tokenizer and chat template: the `import: {tiny: ...}`
source, so a recipe can exercise every engine end to end in seconds without a download.

The tokenizer is a byte-level BPE trained on a small fixed corpus, so it encodes any text;
the chat template is ChatML with `<|im_end|>` as end of turn.
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


def tiny_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def build_tiny(out_dir: str | Path, options: dict, *, overwrite: bool = False) -> Checkpoint:
    """Write a random tiny model; options: arch (llama|qwen2), seed, layers, hidden, vocab_size."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    for key, value in options.items():
        if key not in OPTIONS:
            raise ConfigError(f"tiny: unknown option '{key}' (known: {', '.join(OPTIONS)})")
        if not isinstance(value, OPTIONS[key]) or isinstance(value, bool):
            raise ConfigError(f"tiny: '{key}' must be a {OPTIONS[key].__name__}, got {value!r}")
    arch = options.get("arch", "llama")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"tiny: arch must be one of {', '.join(ARCHITECTURES)}, got '{arch}'")
    layers, hidden = options.get("layers", 4), options.get("hidden", 64)
    tokenizer = tiny_tokenizer(options.get("vocab_size", 512))
    config_class = LlamaConfig if arch == "llama" else Qwen2Config
    config = config_class(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=512, tie_word_embeddings=False,
                          bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(options.get("seed", 0))
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    lineage = make_lineage("import-tiny", {"arch": arch, "layers": layers, "hidden": hidden,
                                           "seed": options.get("seed", 0)})
    return save_model(model, out_dir, lineage=lineage, tokenizer=tokenizer, overwrite=overwrite)
