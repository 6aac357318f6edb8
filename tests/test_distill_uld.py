"""ULD across tokenizers: the chunked loss and its gradients against a plain reference written
from the paper's formula (sort each side's probabilities descending, pad the shorter with zeros,
L1 distance), plus the student's cross-entropy."""

import pytest
import torch

from workbench.distill.cross_tokenizer.teacher import OnlineRows
from workbench.distill.cross_tokenizer.uld import ULD_WEIGHT, uld_loss


def reference(h, w, targets, h_t, w_t, pair_student, weight, temperature):
    """Whole logits, autograd, the paper's formula written out row by row."""
    logits = h @ w.T
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    teacher = torch.softmax(h_t @ w_t.T / temperature, dim=1)
    uld = 0.0
    for row, i in enumerate(pair_student.tolist()):
        q = torch.softmax(logits[i] / temperature, dim=0).sort(descending=True).values
        p = teacher[row].sort(descending=True).values
        size = max(len(q), len(p))
        q = torch.cat([q, q.new_zeros(size - len(q))])
        p = torch.cat([p, p.new_zeros(size - len(p))])
        uld = uld + (q - p).abs().sum()
    return ce + weight * uld


@pytest.mark.parametrize("vocab_s,vocab_t,temperature,chunk", [(50, 80, 1.0, 4), (90, 40, 2.0, 3), (60, 60, 1.0, 64)])
def test_chunked_uld_equals_the_paper_formula_with_its_gradients(vocab_s, vocab_t, temperature, chunk):
    torch.manual_seed(0)
    n, hidden, hidden_t = 11, 16, 24
    h = torch.randn(n, hidden, dtype=torch.float64, requires_grad=True)
    w = torch.randn(vocab_s, hidden, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(vocab_s, (n,))
    pair_student = torch.tensor([0, 1, 3, 4, 5, 8, 10])  # some student targets have no teacher partner
    h_t = torch.randn(len(pair_student), hidden_t, dtype=torch.float64)
    w_t = torch.randn(vocab_t, hidden_t, dtype=torch.float64)
    loss, stats = uld_loss(h, w, targets, OnlineRows(h_t, w_t), pair_student, temperature=temperature, chunk_size=chunk)
    loss.backward()
    got = (h.grad.clone(), w.grad.clone())
    h.grad = w.grad = None
    expected = reference(h, w, targets, h_t, w_t, pair_student, ULD_WEIGHT, temperature)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(got[0], h.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(got[1], w.grad, rtol=1e-6, atol=1e-9)
    assert stats.pairs == 7 and stats.tokens == n
    ce = torch.nn.functional.cross_entropy(h.detach() @ w.detach().T, targets, reduction="sum").item()
    assert stats.ce == pytest.approx(ce) and loss.item() == pytest.approx(ce + ULD_WEIGHT * stats.kd, rel=1e-6)


def test_uld_of_the_same_distribution_in_another_order_is_zero():
    """ULD sees only the sorted probabilities: a permuted vocabulary costs nothing."""
    torch.manual_seed(1)
    h, w = torch.randn(3, 8), torch.randn(20, 8)
    permuted = w[torch.randperm(20)]
    loss, stats = uld_loss(h, w, torch.zeros(3, dtype=torch.long), OnlineRows(h, permuted), torch.arange(3))
    assert stats.kd == pytest.approx(0.0, abs=1e-6)
