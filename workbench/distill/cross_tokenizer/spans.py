"""Merging of multi-token spans for ``--cross-tokenizer align``, as TRL's GOLD trainer does.

Two consecutive pairs of one assistant turn (``pairing``) close a *span* of answer text that
both sides write, each with its own tokens: the paired target starts it, and the unpaired
targets up to the next pair continue it (a word one side keeps whole and the other writes in two
or three tokens, an emoji one side writes in four byte tokens). A side with continuation tokens
is *merged*: its distribution at the paired target is scaled by the probability of its actual
continuation, i.e. in logs the sum of the log-probabilities of the continuation tokens along the
span's first-token path is added to every log-probability of the first position (GOLD's
"observed" merge: P(y) * P(t_2 | t_1) * ... * P(t_n | t_1..t_n-1)). The result is a measure of
mass <= 1, not a distribution; ``measure_divergence`` compares two such measures. With one token
per side (always, with the same tokenizer) nothing is merged. A pair without a following pair in
its turn (the end of a turn, or the last pair left by truncation) closes no span and is not merged.

The continuation's log-probabilities are at the loss temperature, on both sides; on the student
side they carry gradient into the continuation targets' logits.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from workbench.distill.cross_tokenizer.pairing import Key
from workbench.distill.losses import weighted_or_zero


class Spans(NamedTuple):
    """Per pair (in the order of ``pair_student``): the end (exclusive, a global student target
    index) of its student span, and the teacher's summed log-probability of its own
    continuation tokens (0 where it has none)."""

    student_end: torch.Tensor
    teacher_logprob: torch.Tensor


def span_ends(pairs: list[tuple[int, int]], student_keys: list[Key]) -> list[tuple[int, int]]:
    """(student end, teacher end), exclusive target indices, of each pair's span: the next pair
    when it is in the same turn, else just past the pair (no merge)."""
    ends = []
    for k, (s, t) in enumerate(pairs):
        following = pairs[k + 1] if k + 1 < len(pairs) else None
        if following is not None and student_keys[following[0]][0] == student_keys[s][0]:
            ends.append(following)
        else:
            ends.append((s + 1, t + 1))
    return ends


def continuation_rows(pair_index: torch.Tensor, pair_end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The target rows strictly inside each pair's span, and the pair each of them belongs to."""
    lengths = pair_end - pair_index - 1
    owner = torch.repeat_interleave(torch.arange(len(pair_index), device=pair_index.device), lengths)
    first = torch.repeat_interleave(pair_index + 1, lengths)
    start = torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
    return first + torch.arange(len(owner), device=owner.device) - start, owner


@torch.no_grad()
def span_logprob(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, pair_index: torch.Tensor,
                 pair_end: torch.Tensor, temperature: float, chunk_size: int) -> torch.Tensor:
    """Per pair, the summed log-probability (softmax of hidden @ weight.T / temperature) of the
    target of every row inside its span; computed by chunks of rows, in float32 at least."""
    rows, owner = continuation_rows(pair_index, pair_end)
    compute = torch.promote_types(hidden.dtype, torch.float32)
    w = weight.to(compute)
    total = torch.zeros(len(pair_index), dtype=compute, device=hidden.device)
    for start in range(0, len(rows), chunk_size):
        index = rows[start:start + chunk_size].to(hidden.device)
        logits = (hidden.index_select(0, index).to(compute) @ w.T) / temperature
        picked = logits.gather(1, targets.index_select(0, index)[:, None]).squeeze(1) - logits.logsumexp(dim=1)
        total.index_add_(0, owner[start:start + chunk_size].to(hidden.device), picked)
    return total


def measure_divergence(log_q: torch.Tensor, log_p: torch.Tensor, divergence: str,
                       beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the divergence between two measures over buckets given as log-masses (the
    student's ``log_q``, the teacher's ``log_p``, [R, B]; -inf for an empty bucket), and its
    gradient w.r.t. ``log_q``.

    The KLs are taken in their form for unnormalized measures, sum q log(q / p) - sum q + sum p
    (and the same with q and p swapped), which is >= 0, zero only when q = p, and the plain KL
    when both sum to 1; the JSD needs no such terms. All three are 1-homogeneous: scaling both
    measures scales the divergence.
    """
    q, p = log_q.exp(), log_p.exp()
    if divergence == "reverse_kl":
        grad = weighted_or_zero(q, log_q - log_p)
        return grad.sum(dim=1) - q.sum(dim=1) + p.sum(dim=1), grad
    if divergence == "forward_kl":
        return weighted_or_zero(p, log_p - log_q).sum(dim=1) - p.sum(dim=1) + q.sum(dim=1), q - p
    log_mix = torch.logaddexp(log_q + math.log1p(-beta), log_p + math.log(beta))
    grad = weighted_or_zero(q, log_q - log_mix)
    return beta * weighted_or_zero(p, log_p - log_mix).sum(dim=1) + (1 - beta) * grad.sum(dim=1), (1 - beta) * grad

