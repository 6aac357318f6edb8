"""Universal Logit Distillation (Boizard et al. 2024), chunk of tokens by chunk.

ULD compares two next-token distributions over different vocabularies without any mapping
between them: each side's probability vector is sorted in decreasing order, the shorter one is
padded with zeros to the larger vocabulary, and the loss is the L1 distance between the two
sorted vectors (the Wasserstein-1 distance under a uniform cost, in closed form). It only sees
the *shape* of the distributions, which is why the student also learns its own cross-entropy
on the labels: per the paper, loss = CE + lambda * ULD with lambda = 1.5, the value of the
paper's released training recipes (``distil_factor 1.5``, ``cross_entropy_factor 1``).

The student's cross-entropy runs over all its supervised targets, ULD over the paired ones
(``pairing``). As in ``workbench.distill.losses``, each chunk's logits are computed from the
final hidden states and the lm_head weight, the chunk's gradient w.r.t. its logits is derived in
closed form and turned into gradients of the hidden states and the weight at once, so the
[tokens x vocab] logits of the two models never exist whole. With q the sorted student
probabilities and p the teacher's, dULD/dq_(i) = sign(q_(i) - p_(i)) (1 beyond the teacher's
vocabulary), scattered back through the sort.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from workbench.distill.cross_tokenizer.teacher import CachedRows, OnlineRows, teacher_logprobs
from workbench.distill.losses import gradients_in_forward

ULD_WEIGHT = 1.5


class CrossStats(NamedTuple):
    """Sums (floats, detached): ULD over paired targets, CE and top-1 correct over all targets."""

    kd: float
    ce: float
    correct: float
    pairs: int
    tokens: int


def uld_rows(student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Per row: L1 distance between the two probability vectors sorted descending, the shorter
    padded with zeros."""
    q = student_probs.sort(dim=1, descending=True).values
    p = teacher_probs.sort(dim=1, descending=True).values
    m = min(q.shape[1], p.shape[1])
    return (q[:, :m] - p[:, :m]).abs().sum(dim=1) + q[:, m:].sum(dim=1) + p[:, m:].sum(dim=1)


def uld_loss(student_hidden: torch.Tensor, student_weight: torch.Tensor, targets: torch.Tensor,
             teacher: OnlineRows | CachedRows, pair_student: torch.Tensor,
             weight: float = ULD_WEIGHT, temperature: float = 1.0, chunk_size: int = 256
             ) -> tuple[torch.Tensor, CrossStats]:
    """Summed CE over the student's targets plus ``weight`` times summed ULD over the pairs.

    ``student_hidden`` [N, H] predicts ``targets`` [N]; ``teacher`` holds the rows of the P
    paired targets, in the order of ``pair_student`` [P] (the student target of each pair,
    ascending). Both softmaxes of the ULD term use ``temperature``.
    """
    args = (student_hidden, student_weight, targets, teacher, pair_student, weight, temperature, chunk_size)
    if torch.is_grad_enabled() and (student_hidden.requires_grad or student_weight.requires_grad):
        loss, stats = _ChunkedULD.apply(*args)
    else:
        loss, stats, _, _ = _chunked(*args, want_hidden_grad=False, want_weight_grad=False)
    kd, ce, correct, pairs, tokens = stats.tolist()
    return loss, CrossStats(kd, ce, correct, int(pairs), int(tokens))


def _chunked(hidden, weight, targets, teacher, pair_student, uld_weight, temperature, chunk_size, *,
             want_hidden_grad, want_weight_grad):
    with torch.autocast(hidden.device.type, enabled=False):
        compute = torch.promote_types(hidden.dtype, torch.float32)  # fp32, or fp64 when given fp64
        w = weight.to(compute)
        grad_h = torch.zeros(hidden.shape, dtype=compute, device=hidden.device) if want_hidden_grad else None
        grad_w = torch.zeros_like(w) if want_weight_grad else None
        totals = torch.zeros(3, dtype=torch.float64, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            end = min(start + chunk_size, hidden.shape[0])
            lo, hi = torch.searchsorted(pair_student, torch.tensor([start, end], device=pair_student.device)).tolist()
            h = hidden[start:end].to(compute)
            logits = h @ w.T
            kd, dlogits = _uld_chunk(logits, pair_student[lo:hi] - start,
                                     teacher_logprobs(teacher, lo, hi, temperature, compute), temperature)
            chunk_targets = targets[start:end]
            totals[2] += (logits.argmax(dim=1) == chunk_targets).sum()
            probs = torch.softmax(logits, dim=1)
            rows = torch.arange(end - start, device=logits.device)
            ce = (logits.logsumexp(dim=1) - logits[rows, chunk_targets]).sum()
            totals[0] += kd
            totals[1] += ce
            if grad_h is None and grad_w is None:
                continue
            probs[rows, chunk_targets] -= 1
            dlogits = probs.add_(dlogits, alpha=uld_weight)
            if grad_h is not None:
                grad_h[start:end] = dlogits @ w
            if grad_w is not None:
                grad_w.addmm_(dlogits.T, h)
    loss = (totals[1] + uld_weight * totals[0]).to(compute)
    stats = torch.cat([totals[:3], totals.new_tensor([float(pair_student.numel()), float(hidden.shape[0])])])
    return (loss, stats, None if grad_h is None else grad_h.to(hidden.dtype),
            None if grad_w is None else grad_w.to(weight.dtype))


def _uld_chunk(logits: torch.Tensor, local_pairs: torch.Tensor, teacher_logp: torch.Tensor,
               temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed ULD of the paired rows of one chunk and its gradient w.r.t. the chunk's logits."""
    dlogits = torch.zeros_like(logits)
    if local_pairs.numel() == 0:
        return logits.new_zeros(()), dlogits
    q = torch.softmax(logits.index_select(0, local_pairs) / temperature, dim=1)
    p = teacher_logp.exp()
    q_sorted, order = q.sort(dim=1, descending=True)
    p_sorted = p.sort(dim=1, descending=True).values
    m = min(q.shape[1], p.shape[1])
    kd = ((q_sorted[:, :m] - p_sorted[:, :m]).abs().sum() + q_sorted[:, m:].sum() + p_sorted[:, m:].sum())
    g_sorted = torch.ones_like(q_sorted)
    g_sorted[:, :m] = torch.sign(q_sorted[:, :m] - p_sorted[:, :m])
    g = torch.empty_like(g_sorted).scatter_(1, order, g_sorted)
    # softmax Jacobian: dL/ds_j = q_j (g_j - <g, q>), and s = logits / T
    d_pairs = q.mul_(g - (g * q).sum(dim=1, keepdim=True)).div_(temperature)
    dlogits.index_copy_(0, local_pairs, d_pairs)
    return kd, dlogits


_ChunkedULD = gradients_in_forward(_chunked)
