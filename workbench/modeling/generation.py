"""Answer a prompt with a checkpoint: chat template when the tokenizer has one, greedy by default."""

from __future__ import annotations

import os

import torch

from workbench.errors import ConfigError
from workbench.modeling.loading import load_model, load_tokenizer


def build_prompt_ids(tokenizer, prompt: str, system: str | None = None) -> torch.Tensor:
    """Token ids of the prompt: rendered with the chat template (plus the assistant
    generation prompt) when there is one, plain text otherwise."""
    if tokenizer.chat_template:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        return chat_prompt_ids(tokenizer, messages)
    return tokenizer(prompt, return_tensors="pt")["input_ids"]


def chat_prompt_ids(tokenizer, messages: list[dict]) -> torch.Tensor:
    """Token ids [1, length] of a conversation rendered with the tokenizer's chat template,
    ending with the prompt for the assistant's next turn."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]


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
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        output = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            **sampling_kwargs(temperature),
        )
    return tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True).strip()


def generate_from_checkpoint(path: str | os.PathLike, prompt: str, **kwargs) -> str:
    return generate_text(load_model(path), load_tokenizer(path), prompt, **kwargs)
