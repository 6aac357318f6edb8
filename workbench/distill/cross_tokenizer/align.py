"""Distillation over the tokens two vocabularies share, and ULD for the rest (``--cross-tokenizer align``).

At a paired target (``pairing``) the teacher's distribution is carried into the student's
vocabulary through the vocabulary map (``vocab_map``): every mapped token becomes a bucket,
and all unmapped tokens of each side one more "rest" bucket; the divergence of
``--loss`` (reverse KL by default) runs over these buckets with the same code as a cached
teacher's top-k (``workbench.distill.losses``). How the unmapped mass is spread is compared with
ULD (sorted probabilities of the unmapped tokens of each side, ``uld``), weighted by
``uld_weight``. Unpaired student targets learn from the labels only, with weight 1 - alpha.
With the same tokenizer on both sides every target pairs and every token maps, so the loss and
gradients are those of same-tokenizer distillation.

Multi-token spans (a word one side writes with one token, the other with two) are not merged:
only targets whose contexts match pair (see ``pairing``), so the second half of such a word has
no teacher partner. GOLD's merging (scoring a span by the sum of the log-probabilities along its
first-token path) is not implemented.

Chunked like ``workbench.distill.losses``: each chunk's student and teacher logits exist only
for that chunk, and the gradient is turned into hidden-state and weight gradients at once.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from workbench.distill.cross_tokenizer.teacher import CachedRows, OnlineRows, teacher_logprobs, teacher_vocab
from workbench.distill.losses import LossSpec, SparseTeacher, _chunk, gradients_in_forward


class AlignStats(NamedTuple):
    kd: float  # divergence over the mapped buckets, summed over paired targets
    uld: float  # ULD of the unmapped tokens, summed over paired targets
    ce: float
    correct: float
    agree: float  # student top-1 is the teacher's top-1 mapped token
    pairs: int
    tokens: int


def align_loss(student_hidden, student_weight, targets, teacher: OnlineRows | CachedRows, pair_student,
               student_ids: torch.Tensor, teacher_ids: torch.Tensor, spec: LossSpec, uld_weight: float,
               chunk_size: int) -> tuple[torch.Tensor, AlignStats]:
    """Summed loss over the student's targets (see the module doc) and its statistics.

    ``teacher`` holds the rows of the paired targets ``pair_student`` [P] (ascending);
    ``student_ids`` / ``teacher_ids`` [K] are the vocabulary map."""
    args = (student_hidden, student_weight, targets, teacher, pair_student, student_ids, teacher_ids, spec,
            uld_weight, chunk_size)
    if torch.is_grad_enabled() and (student_hidden.requires_grad or student_weight.requires_grad):
        loss, stats = _ChunkedAlign.apply(*args)
    else:
        loss, stats, _, _ = _chunked(*args, want_hidden_grad=False, want_weight_grad=False)
    kd, uld, ce, correct, agree, pairs, tokens = stats.tolist()
    return loss, AlignStats(kd, uld, ce, correct, agree, int(pairs), int(tokens))


def _unmapped(vocab: int, mapped: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(vocab, dtype=torch.bool, device=mapped.device)
    keep[mapped] = False
    return keep.nonzero().squeeze(1)


def _chunked(hidden, weight, targets, teacher, pair_student, student_ids, teacher_ids, spec: LossSpec, uld_weight,
             chunk_size, *, want_hidden_grad, want_weight_grad):
    want_grad = want_hidden_grad or want_weight_grad
    with torch.autocast(hidden.device.type, enabled=False):
        compute = torch.promote_types(hidden.dtype, torch.float32)
        w = weight.to(compute)
        s_rest, t_rest = _unmapped(w.shape[0], student_ids), _unmapped(teacher_vocab(teacher), teacher_ids)
        grad_h = torch.zeros(hidden.shape, dtype=compute, device=hidden.device) if want_hidden_grad else None
        grad_w = torch.zeros_like(w) if want_weight_grad else None
        totals = torch.zeros(5, dtype=torch.float64, device=hidden.device)  # kd, uld, ce, correct, agree
        for start in range(0, hidden.shape[0], chunk_size):
            end = min(start + chunk_size, hidden.shape[0])
            lo, hi = torch.searchsorted(pair_student, torch.tensor([start, end], device=pair_student.device)).tolist()
            h = hidden[start:end].to(compute)
            logits = h @ w.T
            chunk_targets = targets[start:end]
            paired = pair_student[lo:hi] - start
            unpaired = _unmapped(end - start, paired)
            dlogits = torch.zeros_like(logits) if want_grad else None
            if unpaired.numel():
                _labels_only(logits, unpaired, chunk_targets, spec.alpha, totals, dlogits)
            if paired.numel():
                teacher_logp = teacher_logprobs(teacher, lo, hi, spec.temperature, compute)
                _paired(logits, paired, chunk_targets, teacher_logp, student_ids, teacher_ids, s_rest, t_rest,
                        spec, uld_weight, totals, dlogits)
            if grad_h is not None:
                grad_h[start:end] = dlogits @ w
            if grad_w is not None:
                grad_w.addmm_(dlogits.T, h)
    kd, uld, ce = totals[0], totals[1], totals[2]
    loss = spec.alpha * spec.temperature**2 * kd + uld_weight * uld + (1 - spec.alpha) * ce
    stats = torch.cat([totals, totals.new_tensor([float(pair_student.numel()), float(hidden.shape[0])])])
    return (loss.to(compute), stats, None if grad_h is None else grad_h.to(hidden.dtype),
            None if grad_w is None else grad_w.to(weight.dtype))


def _labels_only(logits, rows, targets, alpha, totals, dlogits):
    """Cross-entropy (weight 1 - alpha) of targets that have no teacher partner."""
    picked, labels = logits.index_select(0, rows), targets.index_select(0, rows)
    logp = torch.log_softmax(picked, dim=1)
    index = torch.arange(len(rows), device=logits.device)
    totals[2] += -logp[index, labels].sum()
    totals[3] += (picked.argmax(dim=1) == labels).sum()
    if dlogits is not None:
        grad = logp.exp_()
        grad[index, labels] -= 1
        dlogits.index_copy_(0, rows, grad.mul_(1 - alpha))


def _paired(logits, rows, targets, teacher_logp, student_ids, teacher_ids, s_rest, t_rest, spec, uld_weight,
            totals, dlogits):
    temperature = spec.temperature
    mapped_logp = teacher_logp.index_select(1, teacher_ids)
    order = mapped_logp.argsort(dim=1, descending=True)  # the teacher's first mapped token first
    rest = teacher_logp.index_select(1, t_rest).logsumexp(dim=1) if t_rest.numel() else \
        teacher_logp.new_full((len(rows),), float("-inf"))
    sparse = SparseTeacher(student_ids[order], mapped_logp.gather(1, order), rest, None)
    picked = logits.index_select(0, rows)
    loss, stats, grad = _chunk(picked, sparse, targets.index_select(0, rows), spec, dlogits is not None)
    kd, ce, correct, agree = stats
    totals[0] += kd
    totals[2] += ce
    totals[3] += correct
    totals[4] += agree
    if s_rest.numel() and t_rest.numel():
        q = torch.softmax(picked / temperature, dim=1)
        uld, g_rest = _uld_unmapped(q.index_select(1, s_rest), teacher_logp.index_select(1, t_rest).exp())
        totals[1] += uld
        if dlogits is not None:
            g = torch.zeros_like(q).index_copy_(1, s_rest, g_rest)
            grad = grad.add_(q.mul_(g - (g * q).sum(dim=1, keepdim=True)), alpha=uld_weight / temperature)
    if dlogits is not None:
        dlogits.index_copy_(0, rows, grad)


def _uld_unmapped(q: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ULD between the unmapped probabilities of each side and its gradient w.r.t. ``q``."""
    q_sorted, order = q.sort(dim=1, descending=True)
    p_sorted = p.sort(dim=1, descending=True).values
    m = min(q.shape[1], p.shape[1])
    uld = (q_sorted[:, :m] - p_sorted[:, :m]).abs().sum() + q_sorted[:, m:].sum() + p_sorted[:, m:].sum()
    g_sorted = torch.ones_like(q_sorted)
    g_sorted[:, :m] = torch.sign(q_sorted[:, :m] - p_sorted[:, :m])
    return uld, torch.empty_like(g_sorted).scatter_(1, order, g_sorted)


_ChunkedAlign = gradients_in_forward(_chunked)
