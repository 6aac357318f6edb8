"""Distillation losses computed chunk of tokens by chunk, never on the full logits.

Inputs are the final hidden states of the supervised positions and the lm_head weights.
For each chunk of ``chunk_size`` tokens the student and teacher logits are computed, the
loss of the chunk is summed and the gradient of the chunk's loss with respect to its student
logits is derived in closed form; it is immediately turned into the gradients with respect to
the student hidden states (``dlogits @ W``) and the lm_head weight (``dlogits^T @ h``,
accumulated). This is Liger-Kernel's fused-linear approach: backward only scales the stored
gradients, so there are three student matmuls per chunk (like plain autograd) instead of the
four of recomputation with ``torch.utils.checkpoint``, and peak memory is a few
[chunk x vocab] buffers instead of many [tokens x vocab] ones.

Conventions (the same as TRL's GKD ``generalized_jsd_loss``), with S the student and T the
teacher distribution, both at temperature ``temperature`` over the ids the two vocabularies
share (a checkpoint's vocab padded to a larger size only adds ids the other never predicts):

- ``reverse_kl``: KL(S || T) (mode seeking, MiniLLM), the default;
- ``forward_kl``: KL(T || S) (mass covering, classic KD);
- ``jsd``: beta * KL(T || M) + (1 - beta) * KL(S || M) with M = beta * T + (1 - beta) * S;
  beta = 0 is forward_kl and beta = 1 is reverse_kl exactly (as in TRL, the end points are
  the KLs themselves, not the vanishing limit of the mixture formula).

Per supervised token the loss is ``alpha * temperature**2 * KD + (1 - alpha) * CE`` where
CE is the student's ordinary cross-entropy on the label over its whole vocab at temperature 1:
alpha = 1 is pure distillation, alpha = 0 plain fine-tuning. Losses are SUMS over supervised
tokens; the training loop divides by the supervised tokens of the global batch.

The teacher is either dense (hidden states + lm_head weight, run online) or sparse (its
top-k ids and log-probabilities from a cache plus the log of the remaining mass): the sparse
loss compares the distributions over k + 1 buckets, the top-k ids and "everything else",
which is exact when k is the vocab size. ``teacher_top_k`` makes an online teacher sparse the
same way, chunk by chunk: the divergence then no longer reaches into the tail of ids the teacher
rules out (log-probabilities of -20 to -40 on near-deterministic answers), where dense reverse
KL spends most of its gradient squashing student mass that never decides a greedy answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from workbench.constants import IGNORE_INDEX
from workbench.distill.heads import local_weight, make_head
from workbench.errors import ConfigError

KD_LOSSES = ("reverse_kl", "forward_kl", "jsd")
AUTO_CHUNK_LOGITS = 2**25


@dataclass(frozen=True)
class LossSpec:
    """What to compute; field names match the CLI options."""

    loss: str = "reverse_kl"
    beta: float = 0.5
    temperature: float = 1.0
    alpha: float = 1.0
    chunk_size: int = 0  # 0: auto, see chunk_tokens
    teacher_top_k: int = 0  # 0: the online teacher's whole vocab, else its top-k ids + one rest bucket

    def validate(self) -> None:
        if self.loss not in KD_LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(KD_LOSSES)}, got {self.loss!r}")
        if not 0 <= self.beta <= 1:
            raise ConfigError(f"beta must be in [0, 1], got {self.beta!r}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"temperature must be > 0, got {self.temperature!r}")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha!r}")
        if not isinstance(self.chunk_size, int) or isinstance(self.chunk_size, bool) or self.chunk_size < 0:
            raise ConfigError(f"chunk_size must be an integer >= 0 (0: auto), got {self.chunk_size!r}")
        if not isinstance(self.teacher_top_k, int) or isinstance(self.teacher_top_k, bool) or self.teacher_top_k < 0:
            raise ConfigError(f"teacher_top_k must be an integer >= 0 (0: whole vocab), got {self.teacher_top_k!r}")

    def chunk_tokens(self, vocab: int) -> int:
        """Tokens per chunk: ``chunk_size``, or for 0 the power of two nearest to 2^25 / vocab
        (512 at vocab 49152, 256 at 128256), so a [chunk x vocab] fp32 buffer stays near 128 MB."""
        if self.chunk_size:
            return self.chunk_size
        return 2 ** max(4, round(math.log2(AUTO_CHUNK_LOGITS / vocab)))

    @property
    def divergence(self) -> str:
        """The divergence actually computed (jsd at beta 0 or 1 is a KL)."""
        if self.loss == "jsd" and self.beta in (0, 1):
            return "forward_kl" if self.beta == 0 else "reverse_kl"
        return self.loss


class DenseTeacher(NamedTuple):
    """An online teacher: final hidden states [N, H_t] and lm_head weight [V_t, H_t]."""

    hidden: torch.Tensor
    weight: torch.Tensor


class _TeacherHead(NamedTuple):
    """A dense teacher's supervised hidden states and its head over the ids shared with the student."""

    hidden: torch.Tensor
    head: object


class SparseTeacher(NamedTuple):
    """A cached teacher at the loss temperature: per token the top-k ids [N, k] (int64), their
    log-probabilities [N, k] and the log of the probability of all other ids [N] (-inf when
    the top-k hold everything); ``vocab`` is the number of ids its softmax ran over (None:
    the student's)."""

    ids: torch.Tensor
    logprobs: torch.Tensor
    rest_logprob: torch.Tensor
    vocab: int | None = None


class DistillStats(NamedTuple):
    """Sums over supervised tokens (floats, detached)."""

    kd: float
    ce: float
    correct: float  # student top-1 == label
    agree: float  # student top-1 == teacher top-1
    tokens: int


def distill_loss(student_hidden: torch.Tensor, student_weight: torch.Tensor,
                 teacher: DenseTeacher | SparseTeacher, labels: torch.Tensor,
                 spec: LossSpec = LossSpec()) -> tuple[torch.Tensor, DistillStats]:
    """Summed distillation loss over the tokens whose label is not -100, and its statistics.

    ``student_hidden`` [N, H] and ``labels`` [N] are aligned (the hidden state that predicts
    the label); a dense teacher's hidden states are aligned with them too, while a sparse
    teacher holds rows for the supervised tokens only, in order. Gradients reach
    ``student_hidden`` and ``student_weight`` when they require them. Lm_head weights that are
    FSDP2 DTensors stay sharded by vocabulary (``workbench.distill.heads``): every rank must
    then call this for the same micro-batch, with the same ``spec``.
    """
    weight, shards = local_weight(student_weight)
    if torch.is_grad_enabled() and (student_hidden.requires_grad or weight.requires_grad):
        loss, stats = _ChunkedDistill.apply(student_hidden, weight, labels, teacher, spec, shards)
    else:
        loss, stats, _, _ = _chunked(student_hidden, weight, labels, teacher, spec, shards,
                                     want_hidden_grad=False, want_weight_grad=False)
    kd, ce, correct, agree, tokens = stats.tolist()
    return loss, DistillStats(kd, ce, correct, agree, int(tokens))


def gradients_in_forward(chunked) -> type[torch.autograd.Function]:
    """An autograd Function around ``chunked(hidden, weight, *rest, want_hidden_grad=...,
    want_weight_grad=...) -> (loss, stats, grad_hidden, grad_weight)``: the chunked losses compute
    their gradients in forward, chunk by chunk, so backward only scales them by the incoming grad."""

    class GradientsInForward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, *rest):
            loss, stats, grad_h, grad_w = chunked(hidden, weight, *rest, want_hidden_grad=ctx.needs_input_grad[0],
                                                  want_weight_grad=ctx.needs_input_grad[1])
            ctx.save_for_backward(grad_h, grad_w)
            ctx.mark_non_differentiable(stats)
            ctx.num_rest = len(rest)
            return loss, stats

        @staticmethod
        def backward(ctx, grad_loss, _grad_stats):
            grad_h, grad_w = ctx.saved_tensors
            return (None if grad_h is None else grad_h * grad_loss.to(grad_h.dtype),
                    None if grad_w is None else grad_w * grad_loss.to(grad_w.dtype), *[None] * ctx.num_rest)

    return GradientsInForward


def _chunked(hidden, weight, labels, teacher, spec: LossSpec, shards=None, *, want_hidden_grad: bool,
             want_weight_grad: bool):
    """Loss, stats [kd, ce, correct, agree, tokens] and, when asked, the gradients of the loss
    w.r.t. ``hidden`` and ``weight`` (in their dtypes), one chunk of supervised tokens at a time.
    ``weight`` is the whole lm_head weight, or this rank's rows of it as ``shards`` says."""
    rows = (labels != IGNORE_INDEX).nonzero().squeeze(1)
    with torch.autocast(hidden.device.type, enabled=False):
        h = hidden.index_select(0, rows).float()
        head = make_head(weight, shards)
        targets = labels.index_select(0, rows)
        teacher = _prepare_teacher(teacher, rows, vocab=head.vocab)
        grad_h = torch.zeros_like(h) if want_hidden_grad else None
        grad_w = torch.zeros_like(head.weight) if want_weight_grad else None
        totals = torch.zeros(5, dtype=torch.float64, device=hidden.device)
        for start, end, padded in head.chunks(h.shape[0], spec.chunk_tokens(head.vocab)):
            h_chunk = h[start:end]
            loss, stats, dlogits = _chunk(head.logits(h_chunk, padded), _teacher_chunk(teacher, start, end, padded),
                                          targets[start:end], spec, want_hidden_grad or want_weight_grad)
            totals[0] += loss
            totals[1:] += stats
            if dlogits is not None:
                grad_chunk = head.backward(dlogits, h_chunk, grad_w)
                del dlogits
                if grad_h is not None:
                    grad_h[start:end] = grad_chunk
    if grad_h is not None:
        full = torch.zeros(hidden.shape, dtype=hidden.dtype, device=hidden.device)
        grad_h = full.index_copy_(0, rows, grad_h.to(hidden.dtype))
    if grad_w is not None:
        grad_w = head.weight_grad(grad_w).to(weight.dtype)
    stats = torch.cat([totals[1:], totals.new_tensor([float(rows.numel())])])
    return totals[0].to(torch.float32), stats, grad_h, grad_w


def _prepare_teacher(teacher, rows: torch.Tensor, vocab: int):
    """The teacher restricted to the supervised rows and to the ids shared with the student
    (a dense teacher's weight becomes its head)."""
    if isinstance(teacher, DenseTeacher):
        return _TeacherHead(teacher.hidden.index_select(0, rows), make_head(*local_weight(teacher.weight), keep=vocab))
    if teacher.ids.shape[0] != rows.numel():
        raise ValueError(f"teacher cache has {teacher.ids.shape[0]} rows for {rows.numel()} supervised tokens")
    if (teacher.vocab or 0) > vocab:
        raise ConfigError(f"the teacher cache covers {teacher.vocab} ids, the student's lm_head only {vocab}")
    if teacher.ids.numel() and int(teacher.ids.max()) >= vocab:
        raise ConfigError(f"teacher cache holds token id {int(teacher.ids.max())}, "
                          f"outside the student's vocab of {vocab}")
    return teacher


def _teacher_chunk(teacher, start: int, end: int, padded: int):
    """A dense teacher's logits for the chunk (over the shared ids), or the cached rows."""
    if isinstance(teacher, _TeacherHead):
        return teacher.head.logits(teacher.hidden[start:end].float(), padded)
    return SparseTeacher(teacher.ids[start:end], teacher.logprobs[start:end], teacher.rest_logprob[start:end],
                         teacher.vocab)


def _chunk(logits: torch.Tensor, teacher, targets: torch.Tensor, spec: LossSpec, want_grad: bool):
    """Loss sum, [kd, ce, correct, agree] sums and d(loss)/d(logits) of one chunk of tokens.

    ``logits`` are the student's fp32 logits [C, V_s] over its whole vocab; ``teacher`` is a
    dense teacher's fp32 logits over the ids the two share, or the cached rows. Every [C x V]
    buffer is freed or reused as soon as possible: their number sets the peak memory.
    """
    temperature, alpha = spec.temperature, spec.alpha
    rows = torch.arange(len(targets), device=logits.device)
    if isinstance(teacher, torch.Tensor):
        teacher_logits, teacher = teacher, None
        shared = teacher_logits.shape[1]
        teacher_top1 = teacher_logits.max(dim=1).indices
        teacher_logp = torch.log_softmax(_scaled_(teacher_logits, temperature), dim=1)
        del teacher_logits
        if spec.teacher_top_k:
            teacher = sparse_from_logprobs(teacher_logp, spec.teacher_top_k)
            del teacher_logp
    else:
        shared = teacher.vocab or logits.shape[1]
        teacher_top1 = teacher.ids[:, 0]
    whole_vocab = shared == logits.shape[1]
    student_top1 = logits[:, :shared].max(dim=1).indices
    target_logits = logits[rows, targets]
    if temperature == 1 and whole_vocab:
        student_logp = torch.log_softmax(logits, dim=1)
        ce_rows = -student_logp[rows, targets]
    else:
        student_logp = torch.log_softmax(logits[:, :shared] / temperature, dim=1)
        ce_rows = logits.logsumexp(dim=1) - target_logits  # cross-entropy at temperature 1, whole vocab
    if alpha == 1 and whole_vocab:
        del logits  # not needed for the gradient
    if not isinstance(teacher, SparseTeacher):
        kd_rows, dkd = _dense_divergence(student_logp, teacher_logp, spec.divergence, spec.beta)
    else:
        kd_rows, dkd = _sparse_divergence(student_logp, teacher, spec.divergence, spec.beta)

    kd_sum, ce_sum = kd_rows.sum(), ce_rows.sum()
    loss = alpha * temperature**2 * kd_sum + (1 - alpha) * ce_sum
    stats = torch.stack([kd_sum.double(), ce_sum.double(),
                         (student_top1 == targets).sum().double(),
                         (student_top1 == teacher_top1).sum().double()])
    if not want_grad:
        return loss.double(), stats, None
    # d/dlogits of T^2 * KD(logits / T) is T * dKD/d(logits / T)
    if alpha == 1 and whole_vocab:
        return loss.double(), stats, dkd if temperature == 1 else dkd.mul_(temperature)
    if temperature == 1 and whole_vocab:
        dlogits = student_logp.exp_()
    else:
        dlogits = torch.softmax(logits, dim=1)
    dlogits[rows, targets] -= 1
    dlogits.mul_(1 - alpha)
    if alpha > 0:
        dlogits[:, :shared].add_(dkd, alpha=alpha * temperature)
    return loss.double(), stats, dlogits


def sparse_from_logprobs(logp: torch.Tensor, k: int) -> SparseTeacher:
    """The top-k ids and log-probabilities of each row and the log of the rest of its mass."""
    top = logp.topk(min(k, logp.shape[1]), dim=1)
    rest = logp.scatter_(1, top.indices, float("-inf")).logsumexp(dim=1)
    return SparseTeacher(top.indices, top.values, rest, logp.shape[1])


def _scaled_(tensor: torch.Tensor, temperature: float) -> torch.Tensor:
    """tensor / temperature, in place (and no pass at all for temperature 1)."""
    return tensor if temperature == 1 else tensor.div_(temperature)


def _dense_divergence(student_logp: torch.Tensor, teacher_logp: torch.Tensor, divergence: str,
                      beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row divergence and its gradient w.r.t. the student's (temperature-scaled) logits;
    ``teacher_logp`` is overwritten.

    With q = softmax(s): for L(q), dL/ds_j = q_j * (g_j - sum_v q_v g_v), g = dL/dq.
    """
    q = student_logp.exp()
    if divergence == "reverse_kl":
        # g = log q - log p (+1, which cancels); q * g summed is the KL
        weighted = torch.sub(student_logp, teacher_logp, out=teacher_logp).mul_(q)
        kd = weighted.sum(dim=1)
        return kd, weighted.addcmul_(q, kd[:, None], value=-1)
    p = teacher_logp.exp()
    if divergence == "forward_kl":
        kd = torch.sub(teacher_logp, student_logp, out=teacher_logp).mul_(p).sum(dim=1)
        return kd, q.sub_(p)  # q * (g - <g, q>) with g = -p / q and <g, q> = -1
    log_mix = torch.logaddexp(student_logp + math.log1p(-beta), teacher_logp + math.log(beta))
    teacher_term = teacher_logp.sub_(log_mix).mul_(p).sum(dim=1)
    del p
    # g = (1 - beta) * (log q - log m)
    weighted = torch.sub(student_logp, log_mix, out=log_mix).mul_(q)
    student_term = weighted.sum(dim=1)
    kd = beta * teacher_term + (1 - beta) * student_term
    return kd, weighted.addcmul_(q, student_term[:, None], value=-1).mul_(1 - beta)


def _sparse_divergence(student_logp: torch.Tensor, teacher: SparseTeacher, divergence: str,
                       beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The divergence over k + 1 buckets (the teacher's top-k ids, then all other ids) and its
    gradient w.r.t. the student's (temperature-scaled) logits over the vocab.

    A bucket's probability is the sum of its ids' probabilities, so for L(Q) over buckets
    dL/ds_j = q_j * (G_b(j) - sum_b Q_b G_b) with G = dL/dQ and b(j) the bucket of id j.
    """
    ids = teacher.ids
    student_rest = student_logp.scatter(1, ids, float("-inf")).logsumexp(dim=1)
    log_q = torch.cat([student_logp.gather(1, ids), student_rest[:, None]], dim=1)
    log_p = torch.cat([teacher.logprobs.float(), teacher.rest_logprob.float()[:, None]], dim=1)
    q, p = log_q.exp(), log_p.exp()
    if divergence == "reverse_kl":
        kd = weighted_or_zero(q, log_q - log_p).sum(dim=1)
        g = log_q - log_p
    elif divergence == "forward_kl":
        kd = weighted_or_zero(p, log_p - log_q).sum(dim=1)
        g = -p / q
    else:
        log_mix = torch.logaddexp(log_q + math.log1p(-beta), log_p + math.log(beta))
        student_term = weighted_or_zero(q, log_q - log_mix).sum(dim=1)
        kd = beta * weighted_or_zero(p, log_p - log_mix).sum(dim=1) + (1 - beta) * student_term
        g = (1 - beta) * (log_q - log_mix)
    g = torch.where(q > 0, g, 0.0)  # an empty bucket (the rest, when k is the vocab) has no ids
    mean_g = (q * g).sum(dim=1, keepdim=True)
    per_id = g[:, -1:].expand_as(student_logp).clone()
    per_id.scatter_(1, ids, g[:, :-1])
    return kd, student_logp.exp().mul_(per_id.sub_(mean_g))


def weighted_or_zero(weight: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """weight * value with 0 * anything = 0 (empty buckets, -inf log-probabilities)."""
    return torch.where(weight > 0, weight * value, 0.0)


_ChunkedDistill = gradients_in_forward(_chunked)
