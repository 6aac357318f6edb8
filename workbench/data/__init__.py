"""Chat data: load and validate JSONL, render with the chat template, mask, split, pad, pack, batch.

The names below are the API the training loop, the engines and the evaluator use.
"""

from workbench.data.batching import (
    batches,
    epoch_order,
    model_inputs,
    num_batches,
    pack_examples,
    packed_collate,
    pad_collate,
    steps_per_epoch,
)
from workbench.data.loading import Conversation, DataWarning, Message, load_conversations
from workbench.data.prepare import DataStats, TRUNCATION_MODES, deduplicate, prepare_datasets
from workbench.data.tokenize import IGNORE_INDEX, TokenizedExample, tokenize_conversation

__all__ = [
    "IGNORE_INDEX",
    "TRUNCATION_MODES",
    "Conversation",
    "DataStats",
    "DataWarning",
    "Message",
    "TokenizedExample",
    "batches",
    "deduplicate",
    "epoch_order",
    "load_conversations",
    "model_inputs",
    "num_batches",
    "pack_examples",
    "packed_collate",
    "pad_collate",
    "prepare_datasets",
    "steps_per_epoch",
    "tokenize_conversation",
]
