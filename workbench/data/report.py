"""The summary `workbench data check` prints."""

from __future__ import annotations

import os

from workbench.data.batching import steps_per_epoch
from workbench.data.loading import load_conversations
from workbench.data.prepare import deduplicate, prepare_datasets


def check_data(path: str | os.PathLike, model: str | os.PathLike | None, *, max_length: int,
               truncation: str, batch_size: int, grad_accum: int, packing: bool, val_split: float,
               seed: int) -> list[str]:
    """Lines describing the data file; without a model, only what needs no tokenizer."""
    if model is None:
        conversations = load_conversations(path)
        _, duplicates = deduplicate(conversations)
        return [f"{path}: valid",
                f"examples            {len(conversations)}",
                f"duplicates          {duplicates}",
                "(pass --model CKPT for token counts, supervised tokens and steps per epoch)"]

    from workbench.modeling import load_tokenizer

    train, val, stats = prepare_datasets(path, load_tokenizer(model), max_length, val_split=val_split,
                                         seed=seed, truncation=truncation)
    steps = steps_per_epoch(train, batch_size, grad_accum, packing=packing, max_length=max_length)
    action = "dropped" if truncation == "drop" else "truncated"
    return [
        f"{path}: valid",
        f"examples            {stats.examples}",
        f"duplicates          {stats.duplicates} (removed)",
        f"train / validation  {stats.train_examples} / {stats.val_examples} "
        f"(val split {val_split}, seed {seed})",
        f"tokens              {stats.tokens} total; per example min {stats.tokens_min}, "
        f"median {stats.tokens_median:g}, max {stats.tokens_max}",
        f"over max length     {stats.too_long} (> {max_length} tokens, {action})",
        f"supervised tokens   {stats.train_supervised_tokens} of {stats.train_tokens} training tokens",
        f"steps per epoch     {steps} (batch size {batch_size}, grad accum {grad_accum}"
        f"{', packed' if packing else ''})",
    ]
