"""Core prompting, padding and generation: one pad-id rule whose id never changes a loss, and
answers that end at the chat template's end-of-turn token even when EOS is another token."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from tests.test_data_batching import summed_token_loss
from tests.tiny_models import make_model, make_tokenizer
from workbench.data import Conversation, Message, pack_examples, packed_collate, pad_collate, tokenize_conversation
from workbench.distill.on_policy import OnPolicyObjective
from workbench.modeling import build_prompt_ids, generate_text, left_padded, pad_token_id, stop_token_ids


class _NoPad:
    """A tokenizer without a pad token (and optionally without EOS), as many base models ship."""

    def __init__(self, eos_token_id):
        self.pad_token_id = None
        self.eos_token_id = eos_token_id


def test_pad_id_is_the_pad_token_else_eos_else_zero():
    tokenizer = make_tokenizer("chatml")
    assert tokenizer.pad_token_id is not None
    assert pad_token_id(tokenizer) == tokenizer.pad_token_id
    assert pad_token_id(_NoPad(eos_token_id=7)) == 7
    assert pad_token_id(_NoPad(eos_token_id=None)) == 0


def test_every_padded_batch_takes_its_pad_id_from_the_one_rule():
    """No module picks a pad id its own way (``tokenizer.pad_token_id or 0`` padded the
    teacher's batches with 0 where the rule gives EOS)."""
    package = Path(__file__).resolve().parents[1] / "workbench"
    own_rules = [f"{path.relative_to(package)}:{number}"
                 for path in package.rglob("*.py")
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"pad_token_id\s+or\b", line)]
    assert own_rules == []


def test_the_pad_id_changes_no_loss_padded_or_packed():
    """Training padded with 0 (the old rule for a tokenizer without pad) and with EOS (the rule
    now) gives the same loss: padding positions are masked out of attention and loss."""
    tokenizer = make_tokenizer("chatml")
    examples = [tokenize_conversation(tokenizer, Conversation(
        (Message("user", "what is " + "two " * i), Message("assistant", "four " * (3 - i % 3))), f"d.jsonl:{i}"))
        for i in range(5)]
    model = make_model("llama", vocab_size=len(tokenizer)).double()
    eos = tokenizer.eos_token_id
    for collate, rows in ((pad_collate, examples), (packed_collate, pack_examples(examples, 64))):
        with_zero, with_eos = collate(rows, pad_id=0), collate(rows, pad_id=eos)
        assert not torch.equal(with_zero["input_ids"], with_eos["input_ids"]), "the batch must have padding"
        with torch.no_grad():
            assert summed_token_loss(model, with_zero).item() == summed_token_loss(model, with_eos).item()


def test_left_padding_puts_every_prompt_against_the_right_edge():
    ids, mask = left_padded([[5, 6, 7], [8]], pad_id=2)
    assert ids.tolist() == [[5, 6, 7], [2, 2, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_stop_tokens_include_the_templates_end_of_turn_when_eos_differs():
    base = make_tokenizer("qwen-base")
    im_end, endoftext = base.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    model = make_model("llama", vocab_size=len(base))
    model.generation_config.eos_token_id = endoftext
    assert stop_token_ids(model, base) == sorted({im_end, endoftext})
    chatml = make_tokenizer("chatml")
    model.generation_config.eos_token_id = chatml.eos_token_id
    assert stop_token_ids(model, chatml) == [chatml.convert_tokens_to_ids("<|im_end|>")]


def _always_says(token_id: int, vocab_size: int):
    """A gpt2 whose every next token is ``token_id``: the final norm outputs one fixed vector
    and only ``token_id``'s lm_head row points along it."""
    model = make_model("gpt2", vocab_size=vocab_size)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[token_id] = 1.0
    return model


def _record_generate(model) -> list[torch.Tensor]:
    outputs = []
    generate = model.generate

    def recording(*args, **kwargs):
        outputs.append(generate(*args, **kwargs))
        return outputs[-1]

    model.generate = recording
    return outputs


def test_a_base_model_stops_at_the_end_of_its_turn():
    """Qwen-base-like: EOS is <|endoftext|>, turns end with <|im_end|>; an answer stops at <|im_end|>."""
    tokenizer = make_tokenizer("qwen-base")
    im_end, endoftext = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    model = _always_says(im_end, len(tokenizer))
    model.config.bos_token_id = model.config.eos_token_id = model.generation_config.eos_token_id = endoftext
    outputs = _record_generate(model)
    generate_text(model, tokenizer, "hello", max_new_tokens=5)
    prompt_length = build_prompt_ids(tokenizer, "hello").shape[1]
    assert outputs[0].shape[1] == prompt_length + 1, "generation went on past <|im_end|>"

    sampler = OnPolicyObjective(None, fraction=1.0, max_new_tokens=5, temperature=0.0, max_length=64,
                                pad_id=pad_token_id(tokenizer), eos_ids=stop_token_ids(model, tokenizer))
    assert sampler.sample(model, [[5, 6, 7], [8]], torch.device("cpu")) == [[im_end], [im_end]]


def test_left_padding_equals_the_tokenizers_own():
    tokenizer = make_tokenizer("chatml")
    encoded = [tokenizer("what is two and two")["input_ids"], tokenizer("hi")["input_ids"]]
    own = tokenizer.pad({"input_ids": encoded}, padding=True, padding_side="left", return_tensors="pt")
    ids, mask = left_padded(encoded, pad_token_id(tokenizer))
    assert torch.equal(ids, own["input_ids"]) and torch.equal(mask, own["attention_mask"])
