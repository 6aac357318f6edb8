"""Choosing each sequence's next token, and where its text may be cut, one row of a batch at a time.

Every request brings its own temperature, top-p and seed, so rows of one batch are sampled
separately, each with its own ``torch.Generator``: a seeded request gets the same answer
whatever else shares its batch. Temperature 0 is greedy (argmax, as ``generate`` does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    def generator(self) -> torch.Generator | None:
        """The request's random stream (None for greedy, which needs none)."""
        if self.temperature == 0:
            return None
        generator = torch.Generator()
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        return generator


def next_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """The next token from one row of last-position logits [vocab]."""
    if sampling.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_probs[before >= sampling.top_p] = 0.0  # keep the smallest set whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Index where the earliest stop string starts in ``text``, or None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def releasable(text: str, stops: tuple[str, ...]) -> str:
    """The part of ``text`` that can be sent now: without a trailing half-decoded character
    (U+FFFD from an incomplete UTF-8 sequence) and without a tail that may still grow into
    a stop string."""
    text = text.rstrip("\ufffd")
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:size]):
                hold = size
                break
    return text[: len(text) - hold]
