"""Greedy answers to held-out prompts, generated in left-padded batches.

A prompt is the conversation up to its last assistant message, rendered with the chat
template and the assistant generation prompt; the expected answer is that last message.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.data.loading import Conversation
from workbench.errors import DataError
from workbench.modeling import left_padded, pad_token_id, prompt_ids, sampling_kwargs, stop_token_ids


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


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[Prompt], *, max_new_tokens: int,
                   batch_size: int) -> list[str]:
    pad_id = pad_token_id(tokenizer)
    stop_ids = stop_token_ids(model, tokenizer)
    encoded = [prompt_ids(tokenizer, p.messages) for p in prompts]
    answers = []
    for start in range(0, len(encoded), batch_size):
        input_ids, attention_mask = left_padded(encoded[start:start + batch_size], pad_id)
        width = input_ids.shape[1]
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=stop_ids,
                                **sampling_kwargs(0.0))
        for row in output[:, width:]:
            answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return answers
