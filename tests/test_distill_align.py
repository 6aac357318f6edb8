"""--cross-tokenizer align: the vocabulary map, the chunked loss against a whole-logits
reference with a partial map, and exact equality with same-tokenizer distillation."""

from functools import partial

import pytest
import torch

from tests.tiny_models import make_checkpoint, make_sentencepiece_tokenizer, make_tokenizer
from workbench.data import load_conversations, pad_collate
from workbench.distill.cross_tokenizer.align import align_loss
from workbench.distill.cross_tokenizer.data import cross_collate, cross_examples
from workbench.distill.cross_tokenizer.objective import CrossTokenizerObjective
from workbench.distill.cross_tokenizer.teacher import OnlineRows
from workbench.distill.cross_tokenizer.vocab_map import vocab_map
from workbench.distill.losses import LossSpec
from workbench.distill.objective import DistillObjective
from workbench.data.tokenize import tokenize_conversation
from workbench.modeling import load_model

SPECS = [LossSpec(), LossSpec("forward_kl", temperature=2.0, alpha=0.5), LossSpec("jsd", beta=0.3, chunk_size=3)]


def test_vocab_map_matches_tokens_that_spell_the_same_text():
    byte_level, piece = make_tokenizer(), make_sentencepiece_tokenizer()
    s, t = vocab_map(byte_level, piece)
    pairs = {byte_level.convert_ids_to_tokens(i): piece.convert_ids_to_tokens(j) for i, j in zip(s.tolist(), t.tolist())}
    assert pairs["Ġtwo"] == "▁two" and pairs["the"] == "the" and pairs["<|im_end|>"] == "</s>"  # eos with eos
    assert "Ã" not in pairs  # half of "é" in bytes: the sentencepiece side keeps "é" whole
    assert len(set(pairs.values())) == len(pairs)
    same_s, same_t = vocab_map(byte_level, byte_level)
    assert torch.equal(same_s, torch.arange(len(byte_level))) and torch.equal(same_t, same_s)


def reference(h, w, targets, h_t, w_t, pair_student, s_ids, t_ids, spec, uld_weight):
    """Whole logits and autograd: reverse KL over mapped buckets + one rest bucket, ULD of the unmapped."""
    T = spec.temperature
    logits = h @ w.T
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    q = torch.softmax(logits[pair_student] / T, dim=1)
    p = torch.softmax(h_t @ w_t.T / T, dim=1)
    qb = torch.cat([q[:, s_ids], 1 - q[:, s_ids].sum(1, keepdim=True)], dim=1)
    pb = torch.cat([p[:, t_ids], 1 - p[:, t_ids].sum(1, keepdim=True)], dim=1)
    kd = (qb * (qb.log() - pb.log())).sum()
    s_rest = [i for i in range(w.shape[0]) if i not in set(s_ids.tolist())]
    t_rest = [i for i in range(w_t.shape[0]) if i not in set(t_ids.tolist())]
    qs, ps = q[:, s_rest].sort(1, descending=True).values, p[:, t_rest].sort(1, descending=True).values
    size = max(qs.shape[1], ps.shape[1])
    qs = torch.cat([qs, qs.new_zeros(len(qs), size - qs.shape[1])], 1)
    ps = torch.cat([ps, ps.new_zeros(len(ps), size - ps.shape[1])], 1)
    uld = (qs - ps).abs().sum()
    return spec.alpha * T**2 * kd + uld_weight * uld + (1 - spec.alpha) * ce.sum()


@pytest.mark.parametrize("spec", [LossSpec(chunk_size=4), LossSpec(temperature=2.0, alpha=0.7, chunk_size=3)])
def test_align_loss_equals_a_whole_logits_reference_with_a_partial_map(spec):
    torch.manual_seed(0)
    n, vocab_s, vocab_t = 9, 30, 45
    h = torch.randn(n, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(vocab_s, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(vocab_s, (n,))
    pair_student = torch.tensor([0, 2, 3, 4, 7, 8])
    h_t, w_t = torch.randn(6, 12, dtype=torch.float64), torch.randn(vocab_t, 12, dtype=torch.float64)
    s_ids, t_ids = torch.tensor([1, 3, 4, 8, 10, 20, 29]), torch.tensor([40, 2, 7, 0, 11, 30, 5])
    loss, stats = align_loss(h, w, targets, OnlineRows(h_t, w_t), pair_student, s_ids, t_ids, spec, 1.5, spec.chunk_size)
    loss.backward()
    got = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    expected = reference(h, w, targets, h_t, w_t, pair_student, s_ids, t_ids, spec, 1.5)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)  # the bucket code casts to fp32
    torch.testing.assert_close(got[0], h.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got[1], w.grad, rtol=1e-5, atol=1e-7)
    assert stats.pairs == 6 and stats.tokens == n and stats.uld > 0


@pytest.mark.parametrize("spec", SPECS)
def test_align_with_the_same_tokenizer_is_same_tokenizer_distillation(tmp_path, spec):
    """Every target pairs with itself and every token maps: loss and gradients as the plain objective's."""
    teacher = load_model(make_checkpoint(tmp_path / "t", layers=3, seed=1))
    student = load_model(make_checkpoint(tmp_path / "s", layers=2, seed=2))
    tokenizer = make_tokenizer()
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(
        '{"messages": [{"role": "user", "content": "say %d"}, {"role": "assistant", "content": "%s"}]}\n' % (i, a)
        for i, a in enumerate(["caf\\u00e9 cr\\u00e8me \\ud83d\\ude00 ok", " two plus two is four.", "olleh 12"])))
    conversations = {c.source: c for c in load_conversations(data)}
    examples = [tokenize_conversation(tokenizer, c) for c in conversations.values()]
    rows = cross_examples(examples, conversations, tokenizer, tokenizer, None)
    collate = partial(pad_collate, pad_id=0)
    results = []
    for objective, batch in (
            (DistillObjective(spec, teacher, device=torch.device("cpu")), collate(examples)),
            (CrossTokenizerObjective("align", teacher, torch.device("cpu"), spec=spec, uld_weight=1.5,
                                     chunk_size=spec.chunk_tokens(len(tokenizer)), tokenizers=(tokenizer, tokenizer)),
             cross_collate(collate, collate)(rows))):
        student.zero_grad()
        loss, count, correct, extra = objective(student, batch)
        loss.backward()
        results.append((loss.item(), count, correct, extra, [p.grad.clone() for p in student.parameters()]))
    (loss_a, count_a, correct_a, extra_a, grads_a), (loss_b, count_b, correct_b, extra_b, grads_b) = results
    assert (count_b, correct_b) == (count_a, correct_a) and extra_b["paired"] == count_a
    assert loss_b == pytest.approx(loss_a, rel=1e-6) and extra_b["unmapped_uld"] == 0
    assert extra_b["teacher_agreement"] == extra_a["teacher_agreement"]
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)  # fp32 noise of two summation orders
