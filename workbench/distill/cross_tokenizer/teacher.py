"""The teacher's side of a cross-tokenizer loss: its next-token log-probabilities at the paired
targets, produced one chunk of pairs at a time, online or from a cache."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class OnlineRows(NamedTuple):
    """The teacher's final hidden states at the paired targets [P, H_t] and its lm_head weight [V_t, H_t]."""

    hidden: torch.Tensor
    weight: torch.Tensor


class CachedRows(NamedTuple):
    """A cache's rows for the paired targets: top-k teacher ids [P, k] and log-probabilities
    [P, k] at the cache's temperature, the log of the remaining mass [P], the teacher's vocab size."""

    ids: torch.Tensor
    logprobs: torch.Tensor
    rest: torch.Tensor
    vocab: int


def teacher_vocab(teacher: OnlineRows | CachedRows) -> int:
    return teacher.weight.shape[0] if isinstance(teacher, OnlineRows) else teacher.vocab


def teacher_logprobs(teacher: OnlineRows | CachedRows, lo: int, hi: int, temperature: float,
                     dtype: torch.dtype) -> torch.Tensor:
    """Log-probabilities [hi - lo, V_t] of pairs lo..hi-1 at ``temperature``. A cache's remaining
    mass is spread evenly over the ids outside its top-k (exact when k is the vocab size)."""
    if isinstance(teacher, OnlineRows):
        logits = teacher.hidden[lo:hi].to(dtype) @ teacher.weight.to(dtype).T
        return torch.log_softmax(logits / temperature, dim=1)
    ids, logprobs = teacher.ids[lo:hi].long(), teacher.logprobs[lo:hi].to(dtype)
    others = teacher.vocab - ids.shape[1]
    fill = teacher.rest[lo:hi].to(dtype) - (math.log(others) if others else 0.0)
    out = fill[:, None].expand(hi - lo, teacher.vocab).clone()
    return out.scatter_(1, ids, logprobs)
