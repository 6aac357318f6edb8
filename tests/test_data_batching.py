"""Padding, packing and the seeded batch order; packed loss equals unpacked loss."""

import pytest
import torch

from tests.tiny_models import make_model, make_tokenizer
from workbench.data import (
    Conversation,
    Message,
    batches,
    model_inputs,
    num_batches,
    pack_examples,
    packed_collate,
    pad_collate,
    steps_per_epoch,
    tokenize_conversation,
)
from workbench.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def examples():
    tokenizer = make_tokenizer("chatml")
    conversations = [
        Conversation((Message("user", "what is " + "two " * (i % 5)), Message("assistant", "four " * (i % 3 + 1))),
                     f"d.jsonl:{i + 1}")
        for i in range(10)
    ]
    return [tokenize_conversation(tokenizer, c) for c in conversations]


def summed_token_loss(model, batch):
    """Cross-entropy summed over supervised tokens, written out by hand (labels shift by one)."""
    logits = model(**model_inputs(batch)).logits
    targets = batch["labels"][:, 1:]
    log_probs = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    keep = targets != -100
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * keep).sum()


@pytest.mark.parametrize("arch,attention", [("llama", "sdpa"), ("llama", "eager"), ("qwen2", "sdpa"),
                                            ("gpt2", "sdpa"), ("gpt2", "eager")])
def test_packed_loss_equals_each_example_alone(examples, arch, attention):
    model = make_model(arch, vocab_size=384).double()
    model.config._attn_implementation = attention
    alone = sum(summed_token_loss(model, pad_collate([e], pad_id=0)) for e in examples)
    rows = pack_examples(examples, max_length=64)
    assert len(rows) < len(examples)
    packed = summed_token_loss(model, packed_collate(rows, pad_id=0))
    padded = summed_token_loss(model, pad_collate(examples, pad_id=0))
    assert abs(packed.item() - alone.item()) < 1e-5
    assert abs(padded.item() - alone.item()) < 1e-5


def test_packed_rows_restart_positions_and_hold_every_example_once(examples):
    rows = pack_examples(examples, max_length=64)
    assert all(sum(len(e) for e in row) <= 64 for row in rows)
    assert sorted(e.source for row in rows for e in row) == sorted(e.source for e in examples)
    batch = packed_collate(rows, pad_id=0)
    assert "attention_mask" not in batch
    first_row = rows[0]
    starts = [sum(len(e) for e in first_row[:k]) for k in range(len(first_row))]
    assert all(batch["position_ids"][0, s].item() == 0 for s in starts)
    with pytest.raises(DataError, match="d.jsonl:.* do not fit a packed row of 8"):
        pack_examples(examples, max_length=8)


def test_pad_collate_shapes(examples):
    batch = pad_collate(examples[:3], pad_id=7)
    width = max(len(e) for e in examples[:3])
    assert batch["input_ids"].shape == (3, width)
    for row, example in enumerate(examples[:3]):
        n = len(example)
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert batch["input_ids"][row, n:].eq(7).all() and batch["labels"][row, n:].eq(-100).all()


@pytest.mark.parametrize("packing", [False, True])
def test_batch_order_is_fixed_by_seed_and_epoch_and_resumable(examples, packing):
    def run(**kwargs):
        return [b["input_ids"].tolist() for b in batches(examples, 3, packing=packing, max_length=64, **kwargs)]

    epoch0 = run(seed=1, epoch=0)
    assert len(epoch0) == num_batches(examples, 3, packing=packing, max_length=64)
    assert run(seed=1, epoch=0) == epoch0
    assert run(seed=1, epoch=1) != epoch0 and len(run(seed=1, epoch=1)) == len(epoch0)
    assert run(seed=2, epoch=0) != epoch0
    assert run(seed=1, epoch=0, start=2) == epoch0[2:]


def test_steps_per_epoch_and_bad_batch_settings(examples):
    assert steps_per_epoch(examples, batch_size=3, grad_accum=2) == 2  # 4 batches of 3, 3, 3, 1
    assert steps_per_epoch(examples, batch_size=4, grad_accum=1) == 3
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):
        steps_per_epoch(examples, batch_size=0)
    with pytest.raises(ConfigError, match="grad_accum"):
        steps_per_epoch(examples, batch_size=2, grad_accum=0)
    with pytest.raises(ConfigError, match="packing needs a max_length"):
        num_batches(examples, 2, packing=True)
