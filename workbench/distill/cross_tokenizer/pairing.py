"""Which student and teacher positions predict the next token from the same text.

Each side renders the conversation with its own chat template and tokenizes it with its own
tokenizer, so the token sequences (and the templates around the answers) differ; only the
assistant texts are common. A supervised target token is predicted from the text before it,
so its *context* is where the previous token ends (character offsets from the fast
tokenizer). Inside each assistant turn the context is measured from the start of the turn's
text (capped at its end, so the end-of-turn tokens, which follow the text on both sides, pair
with each other). A student and a teacher target pair when they have the same turn and the
same context: both models then continue exactly the same answer text.

Several targets of one side can share a context: the byte pieces of a character one
tokenizer splits (an emoji as four byte tokens; the fast tokenizer gives each piece the
whole character's offsets), or tokens after a zero-width one. Within such a group targets are
ranked from the last one, and pair by rank: the last target of a group is the one predicted
after the whole text up to that point, so it pairs with the other side's last; with the same
tokenizer on both sides every target pairs with itself. Targets left without a partner (a
byte piece in the middle of a character the other side keeps whole, the second half of a
word the other side keeps whole) are trained by the student's cross-entropy only under ``uld``;
``align`` merges them into the span their preceding pair starts (``spans``).
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.data.loading import Conversation
from workbench.data.tokenize import IGNORE_INDEX, TokenizedExample, tokenize_conversation
from workbench.errors import ConfigError, DataError

Key = tuple[int, int, int]  # (assistant turn, context in characters of its text, rank from the group's end)


def require_offsets(tokenizer, path) -> None:
    """Pairing needs character offsets, which only fast (Rust) tokenizers give."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"{path}: the tokenizer ({type(tokenizer).__name__}) gives no character offsets "
                          "(a fast tokenizer, tokenizer.json, is needed for --cross-tokenizer)")


@dataclass(frozen=True)
class SideTokens:
    """One side's tokenized conversation and the pairing key of each supervised target, in order
    (a target is a position k >= 1 whose label is not -100)."""

    example: TokenizedExample
    keys: list[Key]


def tokenize_with_keys(tokenizer, conversation: Conversation) -> SideTokens:
    """The conversation tokenized as ``tokenize_conversation`` does, plus the targets' keys."""
    example = tokenize_conversation(tokenizer, conversation)
    messages = conversation.as_dicts()
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if encoded["input_ids"] != example.input_ids:
        raise DataError(f"{conversation.source}: the tokenizer's offsets do not cover the rendered conversation")
    turns = _assistant_text_spans(tokenizer, conversation, text)
    ends = [end for _, end in encoded["offset_mapping"]]
    contexts, reach = [], 0
    for k in range(1, len(example.labels)):
        reach = max(reach, ends[k - 1])
        if example.labels[k] == IGNORE_INDEX:
            continue
        turn = max((i for i, (start, _) in enumerate(turns) if start <= reach), default=None)
        if turn is None:
            raise DataError(f"{conversation.source}: a supervised token lies before every assistant text")
        start, end = turns[turn]
        contexts.append((turn, min(reach, end) - start))
    return SideTokens(example, _rank_from_group_end(contexts))


def _assistant_text_spans(tokenizer, conversation: Conversation, text: str) -> list[tuple[int, int]]:
    """[start, end) characters of each assistant message's text in the rendered conversation."""
    messages = conversation.as_dicts()
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        shared = 0
        while shared < min(len(prompt), len(text)) and prompt[shared] == text[shared]:
            shared += 1
        start = text.find(message["content"], shared)
        if start < 0:
            raise DataError(f"{conversation.source}: the chat template changes the text of assistant turn "
                            f"{i} (it must appear verbatim to pair the two tokenizations)")
        spans.append((start, start + len(message["content"])))
    return spans


def _rank_from_group_end(contexts: list[tuple[int, int]]) -> list[Key]:
    keys, after = [], {}
    for context in reversed(contexts):
        rank = after.get(context, 0)
        after[context] = rank + 1
        keys.append((*context, rank))
    return keys[::-1]


def pair_targets(student_keys: list[Key], teacher_keys: list[Key]) -> list[tuple[int, int]]:
    """(student target index, teacher target index) of every key both sides have, in order."""
    teacher_index = {key: j for j, key in enumerate(teacher_keys)}
    return [(i, teacher_index[key]) for i, key in enumerate(student_keys) if key in teacher_index]
