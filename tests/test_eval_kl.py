"""The KL-to-reference metric a merge search uses, against a per-token computation from whole
logits with plain torch."""

import json

import pytest
import torch

from tests.test_eval import ROWS, perturbed_copy
from workbench.data import load_conversations, tokenize_conversation
from workbench.evaluate import mean_kl, supervised_logprobs
from workbench.modeling import load_model, load_tokenizer


@pytest.fixture
def examples(tiny_llama, tmp_path):
    path = tmp_path / "held-out.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in ROWS))
    tokenizer = load_tokenizer(tiny_llama)
    return [tokenize_conversation(tokenizer, c) for c in load_conversations(path)], tokenizer.pad_token_id


def test_kl_of_a_model_to_itself_is_zero_and_to_another_matches_plain_torch(tiny_llama, examples, tmp_path):
    examples, pad_id = examples
    reference = load_model(tiny_llama)
    other = load_model(perturbed_copy(tiny_llama, tmp_path / "other", 0.2))
    logprobs = supervised_logprobs(reference, examples, pad_id, batch_size=2)
    assert logprobs.shape == (sum(e.num_supervised for e in examples), reference.config.vocab_size)
    assert mean_kl(logprobs, reference, examples, pad_id, batch_size=3) == pytest.approx(0.0, abs=1e-6)
    total, count = 0.0, 0
    for example in examples:  # one at a time, unpadded
        ids = torch.tensor([example.input_ids])
        with torch.no_grad():
            p = torch.log_softmax(reference(input_ids=ids).logits[0, :-1].double(), -1)
            q = torch.log_softmax(other(input_ids=ids).logits[0, :-1].double(), -1)
        supervised = torch.tensor(example.labels[1:]) != -100
        total += (p.exp() * (p - q)).sum(-1)[supervised].sum().item()
        count += int(supervised.sum())
    assert mean_kl(logprobs, other, examples, pad_id, batch_size=2) == pytest.approx(total / count, rel=1e-4)
    assert total / count > 1e-3
