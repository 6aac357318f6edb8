"""The plain implementation of the distillation losses: full [tokens x vocab] logits and
autograd, written as directly as possible from the definitions (F.kl_div as TRL's GKD uses it).

It shares no code with ``workbench.distill.losses``: the tests check the chunked losses and
their gradients against it, and ``scripts/bench_distill.py`` measures it as the baseline.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from workbench.constants import IGNORE_INDEX
from workbench.distill.losses import LossSpec


def plain_distill_loss(student_hidden: torch.Tensor, student_weight: torch.Tensor,
                       teacher_hidden: torch.Tensor, teacher_weight: torch.Tensor,
                       labels: torch.Tensor, spec: LossSpec) -> torch.Tensor:
    """Summed loss over supervised tokens with an online teacher."""
    mask = labels != IGNORE_INDEX
    student_logits = student_hidden[mask] @ student_weight.T
    with torch.no_grad():
        teacher_logits = teacher_hidden[mask] @ teacher_weight.T
    shared = min(student_logits.shape[1], teacher_logits.shape[1])
    student_logp = F.log_softmax(student_logits[:, :shared] / spec.temperature, dim=-1)
    teacher_logp = F.log_softmax(teacher_logits[:, :shared] / spec.temperature, dim=-1)
    kd = _divergence(student_logp, teacher_logp, spec).sum()
    ce = F.cross_entropy(student_logits, labels[mask], reduction="sum")
    return spec.alpha * spec.temperature**2 * kd + (1 - spec.alpha) * ce


def plain_sparse_distill_loss(student_hidden: torch.Tensor, student_weight: torch.Tensor,
                              topk_ids: torch.Tensor, topk_logprobs: torch.Tensor,
                              rest_logprob: torch.Tensor, labels: torch.Tensor,
                              spec: LossSpec) -> torch.Tensor:
    """Summed loss against cached top-k teacher log-probs: the distributions over the top-k
    ids plus one bucket for every other id. Teacher rows are those of the supervised tokens."""
    mask = labels != IGNORE_INDEX
    student_logits = student_hidden[mask] @ student_weight.T
    student_logp = F.log_softmax(student_logits / spec.temperature, dim=-1)
    outside = torch.ones_like(student_logp, dtype=torch.bool).scatter(1, topk_ids, False)
    student_rest = student_logp.masked_fill(~outside, -math.inf).logsumexp(dim=-1, keepdim=True)
    student_buckets = torch.cat([student_logp.gather(1, topk_ids), student_rest], dim=1)
    teacher_buckets = torch.cat([topk_logprobs, rest_logprob[:, None]], dim=1)
    kd = _divergence(student_buckets, teacher_buckets, spec).sum()
    ce = F.cross_entropy(student_logits, labels[mask], reduction="sum")
    return spec.alpha * spec.temperature**2 * kd + (1 - spec.alpha) * ce


def _divergence(student_logp: torch.Tensor, teacher_logp: torch.Tensor, spec: LossSpec) -> torch.Tensor:
    """Per-token divergence; F.kl_div(input, target) is KL(target || input)."""
    def kl(input_logp, target_logp):
        return F.kl_div(input_logp, target_logp, reduction="none", log_target=True).sum(-1)

    if spec.loss == "forward_kl" or (spec.loss == "jsd" and spec.beta == 0):
        return kl(student_logp, teacher_logp)
    if spec.loss == "reverse_kl" or (spec.loss == "jsd" and spec.beta == 1):
        return kl(teacher_logp, student_logp)
    beta = torch.tensor(spec.beta, dtype=student_logp.dtype)
    mixture = torch.logsumexp(torch.stack([student_logp + torch.log(1 - beta),
                                           teacher_logp + torch.log(beta)]), dim=0)
    return beta * kl(mixture, teacher_logp) + (1 - beta) * kl(mixture, student_logp)
