"""From data files to tokenized train and validation sets, with the numbers a user should see.

Order matters and is fixed: read and validate -> remove duplicates -> split (or remove from the
training set what the validation file already holds) -> tokenize -> truncate or drop too-long
examples. De-duplicating before splitting is what keeps the same example out of both sets.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import asdict, dataclass

from workbench.constants import TRUNCATION_MODES
from workbench.data.batching import epoch_order
from workbench.data.loading import Conversation, join_problems, load_conversations
from workbench.data.tokenize import (
    TokenizedExample,
    require_chat_template,
    tokenize_conversation,
    truncate_example,
)
from workbench.errors import ConfigError, DataError


@dataclass
class DataStats:
    """What happened to the data on its way to training (also written into lineage and events)."""

    examples: int = 0            # valid examples read from the training file
    duplicates: int = 0          # removed because an identical example came earlier
    overlap_with_val: int = 0    # training examples removed because the validation file holds them
    train_examples: int = 0
    val_examples: int = 0
    too_long: int = 0            # examples (train + val) longer than max_length
    truncated: int = 0
    dropped: int = 0
    tokens: int = 0              # rendered tokens of the train + val examples before truncation
    tokens_min: int = 0
    tokens_median: float = 0.0
    tokens_max: int = 0
    train_tokens: int = 0        # after truncation / drop
    train_supervised_tokens: int = 0
    max_length: int | None = None
    truncation: str = "truncate"

    def to_dict(self) -> dict:
        return asdict(self)


def deduplicate(conversations: list[Conversation]) -> tuple[list[Conversation], int]:
    """The conversations without repeats (first occurrence kept, order kept) and how many were removed."""
    seen, unique = set(), []
    for conversation in conversations:
        key = conversation.key()
        if key not in seen:
            seen.add(key)
            unique.append(conversation)
    return unique, len(conversations) - len(unique)


def split_conversations(conversations: list[Conversation], val_split: float,
                        seed: int) -> tuple[list[Conversation], list[Conversation]]:
    """A validation share chosen by ``seed`` (at least one example when ``val_split`` > 0);
    both parts keep the file order."""
    if not 0 <= val_split < 1:
        raise ConfigError(f"val_split must be in [0, 1), got {val_split}")
    n_val = max(1, round(len(conversations) * val_split)) if val_split > 0 else 0
    if n_val >= len(conversations):
        raise DataError(f"{conversations[0].source.rsplit(':', 1)[0]}: {len(conversations)} unique "
                        f"examples are too few to hold out a validation split of {val_split}")
    val_index = set(epoch_order(len(conversations), seed, epoch=0)[:n_val])
    train = [c for i, c in enumerate(conversations) if i not in val_index]
    val = [c for i, c in enumerate(conversations) if i in val_index]
    return train, val


def prepare_datasets(train_path: str | os.PathLike, tokenizer, max_length: int | None, *,
                     val_path: str | os.PathLike | None = None, val_split: float = 0.1, seed: int = 0,
                     truncation: str = "truncate"
                     ) -> tuple[list[TokenizedExample], list[TokenizedExample], DataStats]:
    """Tokenized training and validation examples and the statistics of how they were made.

    ``truncation`` says what happens to examples longer than ``max_length``: "truncate" keeps
    their first ``max_length`` tokens, "drop" leaves them out. Both are counted in the stats.
    """
    if truncation not in TRUNCATION_MODES:
        raise ConfigError(f"truncation must be one of {', '.join(TRUNCATION_MODES)}, got '{truncation}'")
    if max_length is not None and max_length < 2:
        raise ConfigError(f"max_length must be at least 2, got {max_length}")
    stats = DataStats(max_length=max_length, truncation=truncation)
    conversations = load_conversations(train_path)
    stats.examples = len(conversations)
    unique, stats.duplicates = deduplicate(conversations)
    if val_path is not None:
        val_conversations, _ = deduplicate(load_conversations(val_path))
        val_keys = {c.key() for c in val_conversations}
        train_conversations = [c for c in unique if c.key() not in val_keys]
        stats.overlap_with_val = len(unique) - len(train_conversations)
    else:
        train_conversations, val_conversations = split_conversations(unique, val_split, seed)

    train_full = _tokenize_all(tokenizer, train_conversations)
    val_full = _tokenize_all(tokenizer, val_conversations)
    lengths = [len(e) for e in train_full + val_full]
    if lengths:
        stats.tokens, stats.tokens_min, stats.tokens_max = sum(lengths), min(lengths), max(lengths)
        stats.tokens_median = statistics.median(lengths)
    train = _fit_lengths(train_full, max_length, truncation, stats)
    val = _fit_lengths(val_full, max_length, truncation, stats)
    if not train:
        raise DataError(f"{train_path}: no training example left (all too long for max length "
                        f"{max_length}, or all in the validation file)")
    stats.train_examples, stats.val_examples = len(train), len(val)
    stats.train_tokens = sum(len(e) for e in train)
    stats.train_supervised_tokens = sum(e.num_supervised for e in train)
    return train, val, stats


def _tokenize_all(tokenizer, conversations: list[Conversation]) -> list[TokenizedExample]:
    """Every conversation tokenized; every example that fails is reported in one DataError."""
    require_chat_template(tokenizer)
    examples, problems = [], []
    for conversation in conversations:
        try:
            examples.append(tokenize_conversation(tokenizer, conversation))
        except DataError as exc:
            problems.append(str(exc))
    if problems:
        raise DataError(join_problems(problems))
    return examples


def _fit_lengths(examples: list[TokenizedExample], max_length: int | None, truncation: str,
                 stats: DataStats) -> list[TokenizedExample]:
    if max_length is None:
        return examples
    fitted = []
    for example in examples:
        if len(example) <= max_length:
            fitted.append(example)
            continue
        stats.too_long += 1
        if truncation == "drop":
            stats.dropped += 1
        else:
            fitted.append(truncate_example(example, max_length))
            stats.truncated += 1
    return fitted
