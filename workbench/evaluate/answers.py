"""Greedy answers to held-out prompts, generated in left-padded batches.

A prompt is the conversation up to its last assistant message, rendered with the chat
template and the assistant generation prompt; the expected answer is that last message.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.data.loading import Conversation
from workbench.errors import DataError
from workbench.modeling import sampling_kwargs


@dataclass(frozen=True)
class Prompt:
    messages: list[dict]  # everything before the last assistant message
    expected: str
    source: str

    @property
    def question(self) -> str:
        """The last user message, for side-by-side tables."""
        users = [m["content"] for m in self.messages if m["role"] == "user"]
        return users[-1] if users else ""


def prompt_of(conversation: Conversation) -> Prompt:
    messages = conversation.as_dicts()
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    if last == 0:
        raise DataError(f"{conversation.source}: the assistant answers nothing (no message before it)")
    return Prompt(messages[:last], messages[last]["content"], conversation.source)


def prompt_ids(tokenizer, prompt: Prompt) -> list[int]:
    if not tokenizer.chat_template:
        text = "\n".join(m["content"] for m in prompt.messages)
        return tokenizer(text)["input_ids"]
    text = tokenizer.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def left_padded(encoded: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of prompts padded on the left, so that every row's new
    tokens start at the same column."""
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        attention_mask[row, width - len(ids):] = 1
    return input_ids, attention_mask


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[Prompt], *, max_new_tokens: int,
                   batch_size: int) -> list[str]:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    answers = []
    for start in range(0, len(encoded), batch_size):
        input_ids, attention_mask = left_padded(encoded[start:start + batch_size], pad_id)
        width = input_ids.shape[1]
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                max_new_tokens=max_new_tokens, pad_token_id=pad_id, **sampling_kwargs(0.0))
        for row in output[:, width:]:
            answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return answers
