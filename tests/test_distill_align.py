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


# Spans, checked by hand: the byte-level BPE ("bl") writes " smile" in six tokens (a lone "Ġ", then
# letters), " quick" in two, "brûlée" in eight (accented letters as two byte tokens each), the
# emoji in four byte tokens after a lone "Ġ", " jumps" in three; the sentencepiece-style side
# ("sp") keeps each whole. (bl target, sp target) pairs, then the exclusive (bl, sp) end of each
# pair's span: the next pair, or just past the last pair (the end of the turn: no merge).
HAND_SPANS = {
    " quickly smile": (["Ġqu", "ick", "ly", "Ġ", "s", "m", "i", "l", "e", "<|im_end|>"],
                       ["▁quick", "ly", "▁smile", "</s>"],
                       [(0, 0), (2, 1), (3, 2), (9, 3)], [(2, 1), (3, 2), (9, 3), (10, 4)]),
    "hello brûlée \U0001F600 jumps": (
        ["he", "llo", "Ġb", "r", "Ã", "»", "l", "Ã", "©", "e", "Ġ", "ð", "Ł", "ĺ", "Ģ", "Ġju", "mp", "s", "<|im_end|>"],
        ["he", "llo", "▁brûlée", "▁\U0001F600", "▁jumps", "</s>"],
        [(0, 0), (1, 1), (2, 2), (10, 3), (15, 4), (18, 5)], [(1, 1), (2, 2), (10, 3), (15, 4), (18, 5), (19, 6)]),
}


def _conversation(answer):
    from workbench.data.loading import Conversation, Message

    return Conversation((Message("user", "say it"), Message("assistant", answer)), f"hand:{len(answer)}")


def _supervised_tokens(tokenizer, example):
    return [tokenizer.convert_ids_to_tokens(example.input_ids[k]) for k in range(1, len(example.labels))
            if example.labels[k] != -100]


@pytest.mark.parametrize("answer", HAND_SPANS)
def test_span_ends_close_each_pair_at_the_next_one_in_its_turn(answer):
    byte_level, piece = make_tokenizer(), make_sentencepiece_tokenizer()
    rows = cross_examples([tokenize_conversation(byte_level, _conversation(answer))],
                          {_conversation(answer).source: _conversation(answer)}, byte_level, piece, None)
    bl_tokens, sp_tokens, pairs, ends = HAND_SPANS[answer]
    assert _supervised_tokens(byte_level, rows[0]) == bl_tokens
    assert _supervised_tokens(piece, rows[0].teacher) == sp_tokens
    assert list(rows[0].pairs) == pairs and list(rows[0].span_ends) == ends


def merged_reference(student, teacher, s_tok, t_tok, answers, spec, uld_weight, swap):
    """The align loss written from its formula with whole logits and autograd, spans taken from
    HAND_SPANS: per pair, each side's buckets (mapped tokens, one rest bucket) at the first target
    of its span, every log-mass plus the side's summed log-probability of its other targets in the
    span; the divergence of the two measures (KLs as sum a log(a/b) - sum a + sum b); ULD of the
    unmapped masses; the student's cross-entropy on every target."""
    s_ids, t_ids = vocab_map(s_tok, t_tok)
    T = spec.temperature
    total = 0.0
    for answer in answers:
        conv = _conversation(answer)
        s_ex, t_ex = tokenize_conversation(s_tok, conv), tokenize_conversation(t_tok, conv)
        s_pos = [k - 1 for k in range(1, len(s_ex.labels)) if s_ex.labels[k] != -100]
        t_pos = [k - 1 for k in range(1, len(t_ex.labels)) if t_ex.labels[k] != -100]
        s_logits = student(input_ids=torch.tensor([s_ex.input_ids])).logits[0, s_pos].double()
        with torch.no_grad():
            t_logits = teacher(input_ids=torch.tensor([t_ex.input_ids])).logits[0, t_pos].double()
        s_labels = torch.tensor([s_ex.input_ids[k + 1] for k in s_pos])
        t_labels = torch.tensor([t_ex.input_ids[k + 1] for k in t_pos])
        _, _, pairs, ends = HAND_SPANS[answer]
        if swap:
            pairs, ends = [(b, a) for a, b in pairs], [(b, a) for a, b in ends]
        s_logq, t_logp = torch.log_softmax(s_logits / T, 1), torch.log_softmax(t_logits / T, 1)
        s_rest = [i for i in range(s_logits.shape[1]) if i not in set(s_ids.tolist())]
        t_rest = [i for i in range(t_logits.shape[1]) if i not in set(t_ids.tolist())]
        for (s, t), (s_end, t_end) in zip(pairs, ends):
            c_s = sum(s_logq[i, s_labels[i]] for i in range(s + 1, s_end))
            c_t = sum(t_logp[j, t_labels[j]] for j in range(t + 1, t_end))
            log_q = torch.cat([s_logq[s, s_ids], s_logq[s, s_rest].logsumexp(0, keepdim=True)]) + c_s
            log_p = torch.cat([t_logp[t, t_ids], t_logp[t, t_rest].logsumexp(0, keepdim=True)]) + c_t
            q, p = log_q.exp(), log_p.exp()
            if spec.divergence == "reverse_kl":
                kd = (q * (log_q - log_p)).sum() - q.sum() + p.sum()
            elif spec.divergence == "forward_kl":
                kd = (p * (log_p - log_q)).sum() - p.sum() + q.sum()
            else:
                m = spec.beta * p + (1 - spec.beta) * q
                kd = spec.beta * (p * (p / m).log()).sum() + (1 - spec.beta) * (q * (q / m).log()).sum()
            qs = (s_logq[s, s_rest] + c_s).exp().sort(descending=True).values
            ps = (t_logp[t, t_rest] + c_t).exp().sort(descending=True).values
            size = max(len(qs), len(ps))
            uld = (torch.cat([qs, qs.new_zeros(size - len(qs))]) - torch.cat([ps, ps.new_zeros(size - len(ps))])).abs()
            total = total + spec.alpha * T**2 * kd + uld_weight * uld.sum()
        ce = torch.nn.functional.cross_entropy(s_logits, s_labels, reduction="sum")
        total = total + (1 - spec.alpha) * ce
    return total


@pytest.mark.parametrize("swap", [False, True], ids=["student-splits", "teacher-splits"])
@pytest.mark.parametrize("spec", SPECS)
def test_merged_spans_equal_an_autograd_reference(tmp_path, spec, swap):
    """Words one side writes in 2-8 tokens and the other in one, an emoji in byte tokens after a
    lone space token, leading spaces: loss and the student's gradients as the formula's, with the
    byte-level side as student (it merges) and as teacher (the teacher merges), in chunks of 3
    targets (a span's continuation crosses chunks). The code runs in float32, the reference in float64."""
    byte_level, piece = make_tokenizer(), make_sentencepiece_tokenizer()
    s_tok, t_tok = (piece, byte_level) if swap else (byte_level, piece)
    student = load_model(make_checkpoint(tmp_path / "s", layers=2, seed=2, tokenizer=s_tok))
    teacher = load_model(make_checkpoint(tmp_path / "t", layers=2, seed=1, tokenizer=t_tok))
    answers = list(HAND_SPANS)
    conversations = {_conversation(a).source: _conversation(a) for a in answers}
    examples = [tokenize_conversation(s_tok, c) for c in conversations.values()]
    rows = cross_examples(examples, conversations, s_tok, t_tok, None)
    objective = CrossTokenizerObjective("align", teacher, torch.device("cpu"), spec=spec, uld_weight=1.5,
                                        chunk_size=3, tokenizers=(s_tok, t_tok))
    batch = cross_collate(partial(pad_collate, pad_id=0), partial(pad_collate, pad_id=0))(rows)
    loss, count, _, extra = objective(student, batch)
    loss.backward()
    got = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()
    expected = merged_reference(student, teacher, s_tok, t_tok, answers, spec, 1.5, swap)
    expected.backward()
    assert extra["paired"] == 10 and count == (29 if not swap else 10)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for name, a, (_, p) in zip([n for n, _ in student.named_parameters()], got, student.named_parameters()):
        torch.testing.assert_close(a, p.grad.float(), rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
