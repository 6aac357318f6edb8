"""The chunked distillation losses against the plain full-logits autograd implementation."""

import math

import pytest
import torch

from workbench.distill.losses import DenseTeacher, LossSpec, SparseTeacher, distill_loss
from workbench.distill.reference import plain_distill_loss, plain_sparse_distill_loss
from workbench.errors import ConfigError

TOKENS, HIDDEN, TEACHER_HIDDEN = 37, 16, 24
STUDENT_VOCAB, TEACHER_VOCAB = 50, 56  # the same tokenizer padded to different sizes

SPECS = [
    LossSpec("reverse_kl", chunk_size=8),
    LossSpec("forward_kl", chunk_size=8),
    LossSpec("jsd", beta=0.3, chunk_size=8),
    LossSpec("jsd", beta=0.0, chunk_size=8),
    LossSpec("jsd", beta=1.0, chunk_size=8),
    LossSpec("reverse_kl", temperature=2.0, alpha=0.7, chunk_size=5),
    LossSpec("forward_kl", temperature=0.5, alpha=0.25, chunk_size=64),
    LossSpec("jsd", beta=0.6, temperature=1.5, alpha=0.4, chunk_size=3),
    LossSpec("reverse_kl", alpha=0.0, chunk_size=8),
]


def make_inputs(seed=0, student_vocab=STUDENT_VOCAB, teacher_vocab=TEACHER_VOCAB):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(TOKENS, HIDDEN, generator=generator)
    weight = torch.randn(student_vocab, HIDDEN, generator=generator) * 0.5
    teacher_hidden = torch.randn(TOKENS, TEACHER_HIDDEN, generator=generator)
    teacher_weight = torch.randn(teacher_vocab, TEACHER_HIDDEN, generator=generator) * 0.5
    labels = torch.randint(0, min(student_vocab, teacher_vocab), (TOKENS,), generator=generator)
    labels[torch.rand(TOKENS, generator=generator) < 0.3] = -100
    return hidden, weight, teacher_hidden, teacher_weight, labels


def loss_and_grads(fn, hidden, weight):
    hidden = hidden.clone().requires_grad_(True)
    weight = weight.clone().requires_grad_(True)
    loss = fn(hidden, weight)
    loss.backward()
    return loss.detach(), hidden.grad, weight.grad


def assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.loss}-b{s.beta}-T{s.temperature}-a{s.alpha}")
def test_chunked_loss_and_gradients_equal_plain_autograd(spec):
    hidden, weight, teacher_hidden, teacher_weight, labels = make_inputs()
    teacher = DenseTeacher(teacher_hidden, teacher_weight)
    chunked = loss_and_grads(lambda h, w: distill_loss(h, w, teacher, labels, spec)[0], hidden, weight)
    plain = loss_and_grads(
        lambda h, w: plain_distill_loss(h, w, teacher_hidden, teacher_weight, labels, spec), hidden, weight)
    for actual, expected in zip(chunked, plain):
        assert_close(actual, expected)
    masked = labels == -100
    assert masked.any() and chunked[1][masked].abs().max() == 0


def test_stats_count_supervised_tokens_and_agreement():
    hidden, weight, teacher_hidden, teacher_weight, labels = make_inputs(seed=1)
    spec = LossSpec(alpha=0.5, chunk_size=7)
    _, stats = distill_loss(hidden, weight, DenseTeacher(teacher_hidden, teacher_weight), labels, spec)
    mask = labels != -100
    student_logits = hidden[mask] @ weight.T
    teacher_logits = teacher_hidden[mask] @ teacher_weight[:STUDENT_VOCAB].T
    assert stats.tokens == int(mask.sum())
    assert stats.agree == (student_logits.argmax(1) == teacher_logits.argmax(1)).sum().item()
    assert stats.correct == (student_logits.argmax(1) == labels[mask]).sum().item()
    expected_ce = torch.nn.functional.cross_entropy(student_logits, labels[mask], reduction="sum")
    assert math.isclose(stats.ce, expected_ce.item(), rel_tol=1e-5)


def test_loss_under_no_grad_matches_and_computes_no_gradient():
    hidden, weight, teacher_hidden, teacher_weight, labels = make_inputs(seed=2)
    spec = LossSpec("jsd", beta=0.5, chunk_size=4)
    with torch.no_grad():
        loss, _ = distill_loss(hidden, weight, DenseTeacher(teacher_hidden, teacher_weight), labels, spec)
        expected = plain_distill_loss(hidden, weight, teacher_hidden, teacher_weight, labels, spec)
    assert_close(loss, expected)


def sparse_teacher(teacher_hidden, teacher_weight, labels, k, temperature):
    mask = labels != -100
    logp = torch.log_softmax(teacher_hidden[mask] @ teacher_weight.T / temperature, dim=-1)
    top = logp.topk(k, dim=-1)
    rest = logp.scatter(1, top.indices, -math.inf).logsumexp(dim=-1)
    return SparseTeacher(top.indices, top.values, rest)


@pytest.mark.parametrize("spec", SPECS[:3] + SPECS[5:8], ids=lambda s: f"{s.loss}-b{s.beta}-a{s.alpha}")
def test_sparse_loss_with_full_top_k_equals_online_distillation(spec):
    hidden, weight, teacher_hidden, teacher_weight, labels = make_inputs(seed=3, teacher_vocab=STUDENT_VOCAB)
    cached = sparse_teacher(teacher_hidden, teacher_weight, labels, STUDENT_VOCAB, spec.temperature)
    online = loss_and_grads(
        lambda h, w: distill_loss(h, w, DenseTeacher(teacher_hidden, teacher_weight), labels, spec)[0],
        hidden, weight)
    offline = loss_and_grads(lambda h, w: distill_loss(h, w, cached, labels, spec)[0], hidden, weight)
    for actual, expected in zip(offline, online):
        assert_close(actual, expected)


@pytest.mark.parametrize("spec", SPECS[:3] + SPECS[5:8], ids=lambda s: f"{s.loss}-b{s.beta}-a{s.alpha}")
def test_sparse_top_k_loss_and_gradients_equal_plain_autograd(spec):
    hidden, weight, teacher_hidden, teacher_weight, labels = make_inputs(seed=4, teacher_vocab=STUDENT_VOCAB)
    cached = sparse_teacher(teacher_hidden, teacher_weight, labels, 7, spec.temperature)
    chunked = loss_and_grads(lambda h, w: distill_loss(h, w, cached, labels, spec)[0], hidden, weight)
    plain = loss_and_grads(lambda h, w: plain_sparse_distill_loss(h, w, *cached[:3], labels, spec), hidden, weight)
    for actual, expected in zip(chunked, plain):
        assert_close(actual, expected)


@pytest.mark.parametrize("spec", SPECS[:3] + SPECS[5:8], ids=lambda s: f"{s.loss}-b{s.beta}-a{s.alpha}")
def test_online_teacher_top_k_equals_plain_autograd_on_the_teachers_top_k(spec):
    hidden, weight, teacher_hidden, teacher_weight, labels = make_inputs(seed=6, teacher_vocab=STUDENT_VOCAB)
    online_top_k = LossSpec(spec.loss, spec.beta, spec.temperature, spec.alpha, chunk_size=6, teacher_top_k=7)
    top = sparse_teacher(teacher_hidden, teacher_weight, labels, 7, spec.temperature)
    chunked = loss_and_grads(lambda h, w: distill_loss(
        h, w, DenseTeacher(teacher_hidden, teacher_weight), labels, online_top_k)[0], hidden, weight)
    plain = loss_and_grads(lambda h, w: plain_sparse_distill_loss(h, w, *top[:3], labels, spec), hidden, weight)
    for actual, expected in zip(chunked, plain):
        assert_close(actual, expected)
    whole = loss_and_grads(lambda h, w: distill_loss(
        h, w, DenseTeacher(teacher_hidden, teacher_weight), labels, spec)[0], hidden, weight)
    assert not torch.allclose(chunked[0], whole[0]), "7 of 50 ids plus a rest bucket is not the whole vocab"


def test_bfloat16_inputs_give_gradients_in_their_dtype_close_to_float32():
    hidden, weight, teacher_hidden, teacher_weight, labels = make_inputs(seed=5)
    spec = LossSpec(chunk_size=8)
    teacher = DenseTeacher(teacher_hidden.bfloat16(), teacher_weight.bfloat16())
    loss, grad_h, grad_w = loss_and_grads(lambda h, w: distill_loss(h, w, teacher, labels, spec)[0],
                                          hidden.bfloat16(), weight.bfloat16())
    assert grad_h.dtype == grad_w.dtype == torch.bfloat16
    reference = plain_distill_loss(hidden.bfloat16().float(), weight.bfloat16().float(),
                                   teacher_hidden.bfloat16().float(), teacher_weight.bfloat16().float(),
                                   labels, spec)
    assert math.isclose(loss.item(), reference.item(), rel_tol=1e-4)


@pytest.mark.parametrize("field, value", [("beta", 1.5), ("beta", -0.1), ("temperature", 0.0),
                                          ("temperature", -1.0), ("alpha", 1.2), ("alpha", -0.5),
                                          ("loss", "kl"), ("chunk_size", -1),
                                          ("teacher_top_k", -1), ("teacher_top_k", 2.5)])
def test_bad_loss_parameters_name_the_key(field, value):
    with pytest.raises(ConfigError, match=field):
        LossSpec(**{field: value}).validate()
