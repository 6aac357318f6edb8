"""Prompting, padding and generating: the one prompt renderer, pad-id rule and set of stop tokens.

A prompt is a conversation rendered with the chat template plus the assistant generation
prompt (its messages' contents joined by newlines when the tokenizer has no template). Batches
of prompts are padded on the left, so that every row's new tokens start at the same column.
An answer ends at the model's or tokenizer's EOS, or at the token the chat template closes an
assistant turn with: a base model whose EOS is ``<|endoftext|>`` would otherwise write past
the ``<|im_end|>`` that ends its turn.
"""

from __future__ import annotations

import os

import torch

from workbench.data.tokenize import end_of_turn_id
from workbench.errors import ConfigError
from workbench.modeling.loading import load_model, load_tokenizer


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation to be answered by the assistant."""
    if not tokenizer.chat_template:
        return tokenizer("\n".join(m["content"] for m in messages))["input_ids"]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def build_prompt_ids(tokenizer, prompt: str, system: str | None = None) -> torch.Tensor:
    """Token ids (a batch of one) of a single user prompt, after an optional system message."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return torch.tensor([prompt_ids(tokenizer, messages)], dtype=torch.long)


def pad_token_id(tokenizer) -> int:
    """The id padding positions are filled with: the tokenizer's pad token, else its EOS, else 0.

    Padding is masked out of attention and loss, so the id never changes a result; it only
    shows in a padded batch's ``input_ids``."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0


def left_padded(encoded: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of prompts padded on the left: what ``tokenizer.pad(...,
    padding_side="left")`` gives (tested), also for a tokenizer without a pad token, which
    ``tokenizer.pad`` refuses and the pad-id rule serves with its EOS."""
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids):] = 1
    return input_ids, attention_mask


def stop_token_ids(model, tokenizer) -> list[int]:
    """The ids that end an answer: the generation config's EOS, the tokenizer's, and the chat
    template's end-of-turn token (sorted, for ``generate(eos_token_id=...)``)."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    for token_id in (tokenizer.eos_token_id, end_of_turn_id(tokenizer)):
        if token_id is not None:
            ids.add(token_id)
    return sorted(ids)


def sampling_kwargs(temperature: float) -> dict:
    """``generate`` settings: plain sampling at ``temperature`` (no top-k/top-p cut), or greedy for 0."""
    if temperature > 0:
        return {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}


def generate_text(model, tokenizer, prompt: str, *, max_new_tokens: int = 64, temperature: float = 0.0,
                  system: str | None = None, seed: int = 0) -> str:
    """The model's answer to one prompt (the new tokens only, special tokens stripped)."""
    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise ConfigError(f"--temperature must be >= 0, got {temperature}")
    input_ids = build_prompt_ids(tokenizer, prompt, system).to(model.device)
    torch.manual_seed(seed)
    with torch.no_grad():
        output = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_token_id(tokenizer),
            eos_token_id=stop_token_ids(model, tokenizer),
            **sampling_kwargs(temperature),
        )
    return tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True).strip()


def generate_from_checkpoint(path: str | os.PathLike, prompt: str, **kwargs) -> str:
    return generate_text(load_model(path), load_tokenizer(path), prompt, **kwargs)
