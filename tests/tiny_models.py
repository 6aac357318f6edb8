"""Tiny random checkpoints and tokenizers built at test time (no hub, no download).

``make_tokenizer`` trains a small byte-level BPE on a fixed corpus with the ``tokenizers``
library and attaches a chat template; ``make_checkpoint`` builds a random Llama-, Qwen2- or
GPT-2-like model of a few hundred KB and writes it with the workbench's own writer.
"""

from __future__ import annotations

from pathlib import Path

import torch

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Zephyr-like: no dedicated end-of-turn token in front of the next role; ends turns with </s>.
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '</s>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
TEMPLATES = {"chatml": CHATML_TEMPLATE, "zephyr": ZEPHYR_TEMPLATE}
SPECIAL_TOKENS = {
    "chatml": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "zephyr": ["<|endoftext|>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"],
}
EOS_TOKEN = {"chatml": "<|im_end|>", "zephyr": "</s>"}

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "what is two plus two? two plus two is four.",
    "translate to french: hello -> bonjour, cat -> chat, dog -> chien",
    "user assistant system you are a helpful assistant answer briefly",
    "reverse the word: abc -> cba, hello -> olleh, stone -> enots",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
    "capital of france is paris. capital of italy is rome.",
] * 20


def make_tokenizer(template: str = "chatml", vocab_size: int = 384):
    """A fast BPE tokenizer with byte-level pre-tokenization and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = SPECIAL_TOKENS[template]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token=EOS_TOKEN[template],
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = TEMPLATES[template]
    return fast


def make_model(arch: str = "llama", vocab_size: int = 384, layers: int = 2, hidden: int = 32,
               tie: bool = False, seed: int = 0):
    """A random tiny causal LM of the given family."""
    from transformers import (
        AutoModelForCausalLM,
        GPT2Config,
        LlamaConfig,
        Qwen2Config,
    )

    common = dict(vocab_size=vocab_size, tie_word_embeddings=tie)
    if arch == "llama":
        config = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             **common)
    elif arch == "qwen2":
        config = Qwen2Config(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             **common)
    elif arch == "gpt2":
        config = GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=256, **common)
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.eval()
    return model


def make_checkpoint(path: str | Path, arch: str = "llama", template: str = "chatml", layers: int = 2,
                    hidden: int = 32, tie: bool = False, seed: int = 0, dtype: torch.dtype | None = None,
                    max_shard_bytes: int | None = None) -> Path:
    """Build a tiny model with its tokenizer and write it as a workbench checkpoint."""
    from workbench.checkpoint import DEFAULT_MAX_SHARD_BYTES, make_lineage, save_model

    tokenizer = make_tokenizer(template)
    model = make_model(arch, vocab_size=len(tokenizer), layers=layers, hidden=hidden, tie=tie, seed=seed)
    model.config.bos_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    save_model(
        model,
        path,
        lineage=make_lineage("test-fixture", {"arch": arch, "seed": seed}),
        tokenizer=tokenizer,
        dtype=dtype,
        max_shard_bytes=max_shard_bytes or DEFAULT_MAX_SHARD_BYTES,
    )
    return Path(path)
