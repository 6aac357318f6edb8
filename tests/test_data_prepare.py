"""From files to train/validation sets: duplicates first, a seeded split, too-long examples counted."""

import json

import pytest

from tests.tiny_models import make_tokenizer
from workbench.data import prepare_datasets
from workbench.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer("chatml")


def write_chat(path, pairs):
    with open(path, "w") as f:
        for user, answer in pairs:
            f.write(json.dumps({"messages": [{"role": "user", "content": user},
                                             {"role": "assistant", "content": answer}]}) + "\n")
    return path


def decoded(tokenizer, examples):
    return {tokenizer.decode(e.input_ids) for e in examples}


def test_duplicates_are_removed_before_a_seeded_split(tmp_path, tokenizer):
    pairs = [(f"what is {i}", f"{i}") for i in range(40)]
    path = write_chat(tmp_path / "d.jsonl", pairs + pairs[:5])
    train, val, stats = prepare_datasets(path, tokenizer, None, val_split=0.25, seed=3)
    assert (stats.examples, stats.duplicates) == (45, 5)
    assert (len(train), len(val)) == (stats.train_examples, stats.val_examples) == (30, 10)
    assert decoded(tokenizer, train).isdisjoint(decoded(tokenizer, val))
    assert len(decoded(tokenizer, train) | decoded(tokenizer, val)) == 40

    again, again_val, _ = prepare_datasets(path, tokenizer, None, val_split=0.25, seed=3)
    assert [e.input_ids for e in again] == [e.input_ids for e in train]
    _, other_val, _ = prepare_datasets(path, tokenizer, None, val_split=0.25, seed=4)
    assert decoded(tokenizer, other_val) != decoded(tokenizer, val)
    assert stats.train_supervised_tokens == sum(e.num_supervised for e in train)


def test_validation_file_examples_leave_the_training_set(tmp_path, tokenizer):
    pairs = [(f"q{i}", f"a{i}") for i in range(12)]
    train_path = write_chat(tmp_path / "train.jsonl", pairs)
    val_path = write_chat(tmp_path / "val.jsonl", pairs[:2] + [("other", "x")] * 10)
    train, val, stats = prepare_datasets(train_path, tokenizer, None, val_path=val_path)
    assert (len(train), len(val), stats.overlap_with_val) == (10, 3, 2)
    assert decoded(tokenizer, train).isdisjoint(decoded(tokenizer, val))


@pytest.mark.parametrize("mode", ["truncate", "drop"])
def test_too_long_examples_are_truncated_or_dropped_and_counted(tmp_path, tokenizer, mode):
    pairs = [(f"q{i}", "four") for i in range(10)] + [("q long", "two " * 60)] * 1 + [("q long 2", "one " * 60)]
    path = write_chat(tmp_path / "d.jsonl", pairs)
    train, val, stats = prepare_datasets(path, tokenizer, 40, val_split=0, truncation=mode)
    assert stats.too_long == 2 and stats.tokens_max > 40
    assert all(len(e) <= 40 for e in train)
    if mode == "drop":
        assert (stats.dropped, stats.truncated, len(train)) == (2, 0, 10)
    else:
        assert (stats.dropped, stats.truncated, len(train)) == (0, 2, 12)


def test_bad_options_and_nothing_left(tmp_path, tokenizer):
    path = write_chat(tmp_path / "d.jsonl", [(f"q{i}", "a " * 50) for i in range(10)])
    with pytest.raises(ConfigError, match="truncation must be one of truncate, drop"):
        prepare_datasets(path, tokenizer, 64, truncation="cut")
    with pytest.raises(ConfigError, match="val_split"):
        prepare_datasets(path, tokenizer, 64, val_split=1.0)
    with pytest.raises(DataError, match="no training example left"):
        prepare_datasets(path, tokenizer, 10, val_split=0, truncation="drop")
