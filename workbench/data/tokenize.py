"""Render a conversation with the tokenizer's chat template and mark the tokens to learn.

The loss mask is derived without relying on generation markers in the template
(``{% generation %}``), which most templates lack: the conversation is rendered prefix by
prefix and the token ids are diffed. For the assistant turn ``i``:

- its span starts where ``messages[:i]`` rendered *with* the generation prompt stops matching
  the full conversation's ids (so the ``<|im_start|>assistant\\n`` header stays a prompt);
- it ends where ``messages[:i+1]`` stops matching them, cut right after the last end-of-turn
  token inside the span (so ``<|im_end|>`` is learned but the newline after it is not).

The end-of-turn token is read from the chat template itself, not taken to be the tokenizer's EOS:
a one-turn conversation is rendered and the first special token the template writes after the
assistant's content is it. The two differ in base checkpoints such as Qwen2.5's (EOS
``<|endoftext|>``, turns closed by ``<|im_end|>``). A template that closes turns with no special
token (plain text) leaves the span as the diff gives it; one that refuses that conversation
falls back to the EOS.

Diffing ids with a longest common prefix, rather than assuming each prefix tokenizes to an exact
prefix of the whole, keeps the mask right when a tokenizer merges characters across a boundary.
Labels follow the transformers convention: aligned with ``input_ids`` (the model shifts them),
``-100`` where nothing is learned. The first label is always ``-100``: no token predicts it, and
keeping it out makes packed rows compute exactly the loss of the same examples unpacked.
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.constants import IGNORE_INDEX
from workbench.data.loading import Conversation
from workbench.errors import DataError

# The probe conversation that shows what the template writes after an assistant's content.
_PROBE_ANSWER = "workbench probe answer"
_PROBE = [{"role": "user", "content": "workbench probe question"},
          {"role": "assistant", "content": _PROBE_ANSWER}]


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    source: str = ""

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_supervised(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def tokenize_conversation(tokenizer, conversation: Conversation,
                          max_length: int | None = None) -> TokenizedExample:
    """Token ids and labels of one conversation, cut to ``max_length`` tokens when given.

    Raises DataError (naming the example's file:line) when no token is left to learn from.
    """
    example = _render_and_mask(tokenizer, conversation)
    if example.num_supervised == 0:
        raise DataError(f"{conversation.source}: no assistant token to learn from "
                        "(every assistant turn has weight 0 or renders empty)")
    if max_length is not None and len(example) > max_length:
        example = truncate_example(example, max_length)
    return example


def truncate_example(example: TokenizedExample, max_length: int) -> TokenizedExample:
    """The first ``max_length`` tokens; an error if that leaves nothing to learn."""
    cut = TokenizedExample(example.input_ids[:max_length], example.labels[:max_length], example.source)
    if cut.num_supervised == 0:
        raise DataError(f"{example.source}: {len(example)} tokens, and truncating to the max length "
                        f"{max_length} leaves no assistant token (raise the max length, or set truncation "
                        "to 'drop' to leave such examples out)")
    return cut


def _render_and_mask(tokenizer, conversation: Conversation) -> TokenizedExample:
    messages = conversation.as_dicts()
    encode = _Encoder(tokenizer, conversation.source)
    input_ids = encode(messages, generation_prompt=False)
    labels = [IGNORE_INDEX] * len(input_ids)
    eot_id = end_of_turn_id(tokenizer)
    for i, message in enumerate(conversation.messages):
        if message.role != "assistant" or message.weight == 0:
            continue
        start = _common_prefix(input_ids, encode(messages[:i], generation_prompt=True))
        end = _common_prefix(input_ids, encode(messages[: i + 1], generation_prompt=False))
        end = _end_after_token(input_ids, start, end, eot_id)
        labels[start:end] = input_ids[start:end]
    if labels:
        labels[0] = IGNORE_INDEX
    return TokenizedExample(input_ids, labels, conversation.source)


def require_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the tokenizer has no chat template, so chat data cannot be rendered "
                        "(add one to tokenizer_config.json or chat_template.jinja)")


class _Encoder:
    """Chat-template rendering plus tokenization, with template errors turned into DataErrors."""

    def __init__(self, tokenizer, source: str):
        require_chat_template(tokenizer)
        self.tokenizer = tokenizer
        self.source = source

    def render(self, messages: list[dict], *, generation_prompt: bool) -> str:
        from jinja2 import TemplateError

        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt)
        except TemplateError as exc:
            raise DataError(f"{self.source}: the chat template refused this conversation: {exc}") from None

    def __call__(self, messages: list[dict], *, generation_prompt: bool) -> list[int]:
        text = self.render(messages, generation_prompt=generation_prompt)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def end_of_turn_id(tokenizer) -> int | None:
    """The special token the chat template closes an assistant turn with, or None when the
    template writes no special token after the assistant's content.

    A template that refuses the probe conversation (or rewrites its content) says nothing
    about its turns; the tokenizer's EOS is taken then."""
    try:
        text = _Encoder(tokenizer, "chat template").render(_PROBE, generation_prompt=False)
    except DataError:
        return tokenizer.eos_token_id
    cut = text.rfind(_PROBE_ANSWER)
    if cut < 0:
        return tokenizer.eos_token_id
    special = {token_id for token_id, token in tokenizer.added_tokens_decoder.items() if token.special}
    special.update(tokenizer.all_special_ids)
    after = tokenizer(text[cut + len(_PROBE_ANSWER):], add_special_tokens=False)["input_ids"]
    return next((token_id for token_id in after if token_id in special), None)


def _end_after_token(ids: list[int], start: int, end: int, token_id: int | None) -> int:
    """Shorten ``[start, end)`` to end just after its last ``token_id``, if it has one."""
    if token_id is None:
        return end
    for j in range(end - 1, start - 1, -1):
        if ids[j] == token_id:
            return j + 1
    return end
