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

Multi-token spans (a word one side writes with one token, the other with two or three) are
merged as GOLD does (``spans``): a side with continuation tokens in the span adds their summed
log-probability to its first position's buckets, and the divergence runs between the two merged
measures. The student's continuation targets learn from it too: the gradient with respect to
their summed log-probability reaches their logits. Pairs whose span has one token on each side
(every pair, with the same tokenizer) take the unmerged code path, unchanged.

Chunked like ``workbench.distill.losses``: each chunk's student and teacher logits exist only
for that chunk, and the gradient is turned into hidden-state and weight gradients at once.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from workbench.distill.cross_tokenizer.spans import Spans, continuation_rows, measure_divergence, span_logprob
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
               chunk_size: int, spans: Spans | None = None) -> tuple[torch.Tensor, AlignStats]:
    """Summed loss over the student's targets (see the module doc) and its statistics.

    ``teacher`` holds the rows of the paired targets ``pair_student`` [P] (ascending);
    ``student_ids`` / ``teacher_ids`` [K] are the vocabulary map; ``spans`` the pairs' spans to
    merge (None: no merging)."""
    args = (student_hidden, student_weight, targets, teacher, pair_student, student_ids, teacher_ids, spec,
            uld_weight, chunk_size, spans)
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
             chunk_size, spans, *, want_hidden_grad, want_weight_grad):
    want_grad = want_hidden_grad or want_weight_grad
    with torch.autocast(hidden.device.type, enabled=False):
        compute = torch.promote_types(hidden.dtype, torch.float32)
        w = weight.to(compute)
        s_rest, t_rest = _unmapped(w.shape[0], student_ids), _unmapped(teacher_vocab(teacher), teacher_ids)
        merge = _Merge.of(spans, hidden, w, targets, pair_student, spec.temperature, chunk_size, compute)
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
                merged = None if merge is None else merge.merged[lo:hi]
                plain = slice(None) if merged is None else ~merged
                if merged is None or not merged.all():
                    _paired(logits, paired[plain], chunk_targets, teacher_logp[plain], student_ids, teacher_ids,
                            s_rest, t_rest, spec, uld_weight, totals, dlogits)
                if merged is not None and merged.any():
                    pairs = merged.nonzero().squeeze(1) + lo
                    merge.grad[pairs] = _merged_pairs(
                        logits, paired[merged], chunk_targets, teacher_logp[merged], merge.student[pairs],
                        merge.teacher[pairs], student_ids, teacher_ids, s_rest, t_rest, spec, uld_weight, totals,
                        dlogits)
            if merge is not None and dlogits is not None:
                merge.continuation_grads(logits, chunk_targets, start, end, spec.temperature, dlogits)
            if grad_h is not None:
                grad_h[start:end] = dlogits @ w
            if grad_w is not None:
                grad_w.addmm_(dlogits.T, h)
    kd, uld, ce = totals[0], totals[1], totals[2]
    loss = spec.alpha * spec.temperature**2 * kd + uld_weight * uld + (1 - spec.alpha) * ce
    stats = torch.cat([totals, totals.new_tensor([float(pair_student.numel()), float(hidden.shape[0])])])
    return (loss.to(compute), stats, None if grad_h is None else grad_h.to(hidden.dtype),
            None if grad_w is None else grad_w.to(weight.dtype))


class _Merge(NamedTuple):
    """What merging needs during the chunk loop: per pair the two sides' continuation
    log-probabilities, whether it is merged, and (filled as its chunk is done) the gradient of
    the loss w.r.t. the student's continuation log-probability; the student continuation rows
    (ascending) and their pair."""

    student: torch.Tensor
    teacher: torch.Tensor
    merged: torch.Tensor
    grad: torch.Tensor
    rows: torch.Tensor
    owner: torch.Tensor

    @classmethod
    def of(cls, spans: Spans | None, hidden, weight, targets, pair_student, temperature, chunk_size, compute):
        if spans is None:
            return None
        end = spans.student_end.to(pair_student.device)
        rows, owner = continuation_rows(pair_student, end)
        student = span_logprob(hidden, weight, targets, pair_student, end, temperature, chunk_size).to(compute)
        teacher = spans.teacher_logprob.to(device=hidden.device, dtype=compute)
        merged = (end > pair_student + 1).to(hidden.device) | (teacher != 0)
        return cls(student, teacher, merged, torch.zeros_like(student), rows.to(hidden.device),
                   owner.to(hidden.device))

    def continuation_grads(self, logits, targets, start, end, temperature, dlogits) -> None:
        """Adds to the chunk's continuation rows the gradient through their pair's merged
        log-probability: d/dlogits log softmax(logits / T)[target] = (onehot - softmax) / T."""
        lo, hi = torch.searchsorted(self.rows, torch.tensor([start, end], device=self.rows.device)).tolist()
        if lo == hi:
            return
        local = self.rows[lo:hi] - start
        picked = logits.index_select(0, local)
        d = torch.softmax(picked / temperature, dim=1).neg_()
        d[torch.arange(len(local), device=d.device), targets.index_select(0, local)] += 1
        dlogits.index_add_(0, local, d.mul_(self.grad[self.owner[lo:hi]][:, None] / temperature))


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


def _merged_pairs(logits, rows, targets, teacher_logp, student_span, teacher_span, student_ids, teacher_ids, s_rest,
                  t_rest, spec, uld_weight, totals, dlogits) -> torch.Tensor:
    """Pairs whose span is merged on one side or both (``spans``): the divergence of ``--loss``
    between the two merged measures over the buckets, ULD of the merged unmapped masses, the
    label's cross-entropy; returns d(loss)/d(student span log-probability) per pair.

    A bucket's log-mass is log q_b + c (c: the side's continuation log-probability). Through
    log q_b = logsumexp of its ids' log-softmax, d log q_b / d z_i = [i in b] q_i / q_b - q_i
    (z = logits / T)."""
    temperature, alpha = spec.temperature, spec.alpha
    picked, labels = logits.index_select(0, rows), targets.index_select(0, rows)
    log_q = torch.log_softmax(picked / temperature, dim=1)
    none = picked.new_full((len(rows), 1), float("-inf"))
    q_rest = log_q.index_select(1, s_rest).logsumexp(dim=1, keepdim=True) if s_rest.numel() else none
    p_rest = teacher_logp.index_select(1, t_rest).logsumexp(dim=1, keepdim=True) if t_rest.numel() else none
    mapped_p = teacher_logp.index_select(1, teacher_ids)
    log_big_q = torch.cat([log_q.index_select(1, student_ids), q_rest], dim=1) + student_span[:, None]
    log_big_p = torch.cat([mapped_p, p_rest], dim=1) + teacher_span[:, None]
    kd, g = measure_divergence(log_big_q, log_big_p, spec.divergence, spec.beta)
    q = log_q.exp()
    top1 = picked.argmax(dim=1)
    totals[0] += kd.sum()
    totals[2] += (picked.logsumexp(dim=1) - picked.gather(1, labels[:, None]).squeeze(1)).sum()
    totals[3] += (top1 == labels).sum()
    totals[4] += (top1 == student_ids[mapped_p.argmax(dim=1)]).sum()
    dz = torch.zeros_like(q).index_copy_(1, student_ids, g[:, :-1])
    if s_rest.numel():
        dz.index_copy_(1, s_rest, (log_q.index_select(1, s_rest) - q_rest).exp_().mul_(g[:, -1:]))
    d_span = g.sum(dim=1)
    grad = dz.sub_(q * d_span[:, None]).mul_(alpha * temperature)  # d(T^2 KD)/dlogits = T dKD/dz
    d_span = d_span * (alpha * temperature**2)
    if s_rest.numel() and t_rest.numel():
        q_unmapped = (log_q.index_select(1, s_rest) + student_span[:, None]).exp()
        p_unmapped = (teacher_logp.index_select(1, t_rest) + teacher_span[:, None]).exp()
        uld, g_unmapped = _uld_unmapped(q_unmapped, p_unmapped)
        totals[1] += uld
        g_log = g_unmapped.mul_(q_unmapped)  # dULD / d log of each unmapped mass
        d_uld = torch.zeros_like(q).index_copy_(1, s_rest, g_log).sub_(q * g_log.sum(dim=1, keepdim=True))
        grad.add_(d_uld, alpha=uld_weight / temperature)
        d_span = d_span + uld_weight * g_log.sum(dim=1)
    if dlogits is not None:
        if alpha < 1:
            ce_grad = torch.softmax(picked, dim=1)
            ce_grad[torch.arange(len(rows), device=ce_grad.device), labels] -= 1
            grad.add_(ce_grad, alpha=1 - alpha)
        dlogits.index_copy_(0, rows, grad)
    return d_span


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
