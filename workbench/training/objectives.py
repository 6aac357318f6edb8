"""Training objectives: ``objective(model, batch) -> (loss_sum, num_supervised, num_correct)``.

The loop owns normalization (it divides by the supervised tokens of the whole global batch),
so an objective returns *sums*. It may return a 4th element, a dict of further sums over its
supervised tokens, which validation reports as means (``valid_<name>`` in events.jsonl).
Batches follow the Hugging Face convention: ``labels`` are aligned with ``input_ids`` and hold
-100 where nothing is learned; the objective shifts them.

Only positions whose next token is supervised go through the output head: prompt tokens
never produce [tokens x vocab] logits, which saves time and memory on chat data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workbench.data import IGNORE_INDEX, model_inputs


def unwrap(model):
    """The transformers model inside a peft wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def count_supervised(batch: dict) -> int:
    """How many next-token targets a batch supervises (what the loss is averaged over)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def supervised_hidden_states(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Final hidden states [N, hidden] at the positions whose next token is supervised,
    and those N target ids."""
    hidden = unwrap(model).get_decoder()(**model_inputs(batch)).last_hidden_state
    targets = batch["labels"][:, 1:].to(hidden.device)  # a model spread over devices ends on its last one
    mask = targets != IGNORE_INDEX
    return hidden[:, :-1][mask], targets[mask]


def output_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Logits (fp32) for some final hidden states, as the model's own head computes them."""
    base = unwrap(model)
    logits = base.get_output_embeddings()(hidden).float()
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def causal_lm_objective(model, batch: dict) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Summed next-token cross-entropy and greedy-correct count over supervised tokens."""
    hidden, targets = supervised_hidden_states(model, batch)
    logits = output_logits(model, hidden)
    loss_sum = F.cross_entropy(logits, targets, reduction="sum")
    correct = (logits.detach().argmax(dim=-1) == targets).sum()
    return loss_sum, targets.numel(), correct
