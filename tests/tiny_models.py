"""Tiny random checkpoints and tokenizers built at test time (no hub, no download).

Built from the pieces of the recipe's `tiny` import (``workbench.model_import.tiny``), plus
what only tests need: a Zephyr-like template, GPT-2 models, tied embeddings, their own corpus.
``make_tokenizer`` trains a small byte-level BPE with a chat template; ``make_checkpoint``
builds a random Llama-, Qwen2- or GPT-2-like model of a few hundred KB and writes it with the
workbench's own writer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from workbench.model_import.tiny import CHATML as CHATML_TEMPLATE
from workbench.model_import.tiny import SPECIAL_TOKENS as CHATML_SPECIAL_TOKENS
from workbench.model_import.tiny import random_model, tiny_config, tiny_tokenizer

# Zephyr-like: no dedicated end-of-turn token in front of the next role; ends turns with </s>.
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '</s>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
# "qwen-base" is ChatML with the EOS of Qwen base checkpoints: `<|endoftext|>`, which no turn ends with.
TEMPLATES = {"chatml": CHATML_TEMPLATE, "zephyr": ZEPHYR_TEMPLATE, "qwen-base": CHATML_TEMPLATE}
SPECIAL_TOKENS = {
    "chatml": CHATML_SPECIAL_TOKENS,
    "zephyr": ["<|endoftext|>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"],
    "qwen-base": CHATML_SPECIAL_TOKENS,
}
EOS_TOKEN = {"chatml": "<|im_end|>", "zephyr": "</s>", "qwen-base": "<|endoftext|>"}

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
    return tiny_tokenizer(vocab_size, corpus=CORPUS, special_tokens=SPECIAL_TOKENS[template],
                          eos_token=EOS_TOKEN[template], chat_template=TEMPLATES[template])


CROSS_CORPUS = CORPUS + ["caf\u00e9 cr\u00e8me br\u00fbl\u00e9e \U0001F600 smile \U0001F600 ok"] * 20


def make_sentencepiece_tokenizer(template: str = "zephyr", vocab_size: int = 300):
    """A fast sentencepiece-style tokenizer (BPE over characters, "\u2581" marks a space, an
    unknown token) unlike ``make_tokenizer``'s byte-level one: it keeps an emoji or an accented
    letter whole where the byte-level BPE splits it into byte tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never")
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="never")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>"] + SPECIAL_TOKENS[template],
                                  show_progress=False)
    tokenizer.train_from_iterator(CROSS_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=None, eos_token=EOS_TOKEN[template],
                                   pad_token="<|endoftext|>", unk_token="<unk>")
    fast.chat_template = TEMPLATES[template]
    return fast


def make_model(arch: str = "llama", vocab_size: int = 384, layers: int = 2, hidden: int = 32,
               tie: bool = False, seed: int = 0):
    """A random tiny causal LM of the given family."""
    if arch == "gpt2":
        from transformers import GPT2Config

        config = GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=256, vocab_size=vocab_size,
                            tie_word_embeddings=tie)
    elif arch in ("llama", "qwen2"):
        config = tiny_config(arch, vocab_size, layers, hidden, max_positions=256, tie=tie)
    else:
        raise ValueError(arch)
    model = random_model(config, seed)
    model.eval()
    return model


def make_checkpoint(path: str | Path, arch: str = "llama", template: str = "chatml", layers: int = 2,
                    hidden: int = 32, tie: bool = False, seed: int = 0, dtype: torch.dtype | None = None,
                    max_shard_bytes: int | None = None, tokenizer=None) -> Path:
    """Build a tiny model with its tokenizer (``make_tokenizer(template)`` unless given) and
    write it as a workbench checkpoint."""
    from workbench.checkpoint import DEFAULT_MAX_SHARD_BYTES, make_lineage, save_model

    tokenizer = tokenizer or make_tokenizer(template)
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
