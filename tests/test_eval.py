"""Evaluation: metrics against plain transformers computations, answer matching, the
comparison table with its baseline, and bad input."""

import json
import math

import pytest
import torch

from tests.cli_helpers import run_workbench
from workbench.checkpoint import Checkpoint, make_lineage, save_model
from workbench.data import load_conversations, tokenize_conversation
from workbench.errors import CheckpointError, ConfigError, DataError
from workbench.evaluate import EvalConfig, run
from workbench.evaluate.answers import greedy_answers, prompt_of
from workbench.evaluate.metrics import answer_matches, token_metrics
from workbench.modeling import generate_text, load_model, load_tokenizer

ROWS = [("upper: cat", "CAT"), ("upper: stone", "STONE"), ("count: dog", "3"),
        ("say hello to the fox", "hello fox, the quick brown fox"), ("count: river", "5")]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "held-out.jsonl"
    lines = [json.dumps({"messages": [{"role": "system", "content": "answer briefly"},
                                      {"role": "user", "content": q}, {"role": "assistant", "content": a}]})
             for q, a in ROWS]
    path.write_text("\n".join(lines) + "\n")
    return path


def perturbed_copy(tiny_llama, out, scale: float):
    """tiny_llama plus Gaussian noise, its lineage naming tiny_llama as its model."""
    model = load_model(tiny_llama)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    save_model(model, out, lineage=make_lineage("test", {}, {"model": Checkpoint(tiny_llama)}),
               support_from=tiny_llama)
    return out


@pytest.fixture(scope="module")
def tuned(tiny_llama, tmp_path_factory):
    return perturbed_copy(tiny_llama, tmp_path_factory.mktemp("eval") / "tuned", 0.05)


def test_loss_and_accuracy_equal_a_per_example_transformers_reference(tiny_llama, data_file):
    model, tokenizer = load_model(tiny_llama), load_tokenizer(tiny_llama)
    examples = [tokenize_conversation(tokenizer, c) for c in load_conversations(data_file)]
    total, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for ex in examples:
            ids, labels = torch.tensor([ex.input_ids]), torch.tensor([ex.labels])
            out = model(input_ids=ids, labels=labels)  # transformers' own shifted, masked mean
            n = int((labels[:, 1:] != -100).sum())
            total += out.loss.item() * n
            predicted = out.logits[0, :-1].argmax(-1)
            mask = labels[0, 1:] != -100
            correct += int((predicted[mask] == labels[0, 1:][mask]).sum())
            count += n
    for batch_size in (1, 3):  # padding must not change anything
        got = token_metrics(model, examples, tokenizer.pad_token_id, batch_size)
        assert got.tokens == count
        assert got.loss == pytest.approx(total / count, rel=1e-5)
        assert got.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)
        assert got.token_accuracy == pytest.approx(correct / count)


def test_bits_per_byte_divide_the_summed_loss_by_the_answer_bytes(tiny_llama, tiny_qwen2, tmp_path):
    """Bits per byte: summed loss in bits over the UTF-8 bytes of the supervised answers, the same
    denominator for every tokenizer (emoji and accents count their bytes, not characters); an
    answer cut by max_length has no fair figure."""
    rows = ROWS + [("smile", "ok \U0001F600"), ("accent", "caf\u00e9 cr\u00e8me")]
    data = tmp_path / "bytes.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a},
                                                     {"role": "user", "content": "again"},
                                                     {"role": "assistant", "content": "not learned", "weight": 0}]})
                            + "\n" for q, a in rows))
    answer_bytes = sum(len(a.encode("utf-8")) for _, a in rows)
    assert answer_bytes == sum(len(a) for _, a in rows) + 3 + 2  # the emoji is 4 bytes, each accent 2
    report = run(EvalConfig(models=[str(tiny_llama), str(tiny_qwen2)], data=[str(data)], base=str(tiny_llama),
                            max_new_tokens=2), log=lambda _: None)
    for row in report["results"]:
        assert row["bits_per_byte"] == pytest.approx(row["loss"] * row["tokens"] / math.log(2) / answer_bytes)
    tokenizer = load_tokenizer(tiny_llama)
    first_answer_token = max(ex.labels.index(next(l for l in ex.labels if l != -100)) for ex in
                             (tokenize_conversation(tokenizer, c) for c in load_conversations(data)))
    short = run(EvalConfig(models=[str(tiny_llama)], data=[str(data)], max_new_tokens=2,
                           max_length=first_answer_token + 2),
                log=lambda _: None)
    assert short["results"][0]["bits_per_byte"] is None


def test_batched_greedy_answers_equal_one_by_one_generation(tiny_llama, data_file):
    model, tokenizer = load_model(tiny_llama), load_tokenizer(tiny_llama)
    prompts = [prompt_of(c) for c in load_conversations(data_file)]
    batched = greedy_answers(model, tokenizer, prompts, max_new_tokens=8, batch_size=4)
    single = [generate_text(model, tokenizer, p.question, max_new_tokens=8, system="answer briefly")
              for p in prompts]
    assert batched == single


@pytest.mark.parametrize("mode,answer,expected,hit", [
    ("exact", "  Paris \n", "paris", True),
    ("exact", "Paris, France", "paris", False),
    ("contains", "It is PARIS.", "paris", True),
    ("contains", "Rome", "paris", False),
    ("regex", "The answer is 42", r"the answer is \d+", True),
    ("regex", "answer 42 and more", r"answer \d+", False),  # the whole answer must match
])
def test_answer_matching(mode, answer, expected, hit):
    assert answer_matches(answer, expected, mode) is hit


def test_comparison_includes_the_base_from_lineage_and_agreement(tuned, tiny_llama, data_file, tmp_path):
    out = tmp_path / "eval-out"
    report = run(EvalConfig(models=[str(tuned)], data=[str(data_file)], reference=str(tuned),
                            max_new_tokens=8, out=str(out)), log=lambda _: None)
    models = report["models"]
    assert [m["path"] for m in models] == [str(tiny_llama.resolve()), str(tuned.resolve())]
    assert models[0]["baseline"] and not models[1]["baseline"]
    by_model = {r["model"]: r for r in report["results"]}
    assert by_model["tuned"]["agreement"] == 1.0  # the reference agrees with itself
    assert 0.0 <= by_model["llama"]["agreement"] <= 1.0
    assert by_model["llama"]["loss"] != by_model["tuned"]["loss"]
    assert len(report["side_by_side"]) == 3 and set(report["side_by_side"][0]["answers"]) == {"llama", "tuned"}
    table = (out / "eval.md").read_text()
    assert "| llama (baseline) | held-out |" in table and "| agrees with tuned | token agreement |" in table
    assert json.loads((out / "eval.json").read_text())["results"] == report["results"]


def test_token_agreement_equals_top1_agreement_of_whole_logits(tiny_llama, tiny_qwen2, data_file, tmp_path):
    """Per supervised token of the reference answer: do the two models' top-1 next tokens agree?"""
    nudged = perturbed_copy(tiny_llama, tmp_path / "nudged", 0.01)
    report = run(EvalConfig(models=[str(nudged), str(tiny_qwen2)], data=[str(data_file)], base=str(tiny_llama),
                            reference=str(tiny_llama), max_new_tokens=4), log=lambda _: None)
    by_model = {r["model"]: r["token_agreement"] for r in report["results"]}
    tokenizer = load_tokenizer(tiny_llama)
    same = count = 0
    with torch.no_grad():
        for conversation in load_conversations(data_file):
            example = tokenize_conversation(tokenizer, conversation)
            ids, mask = torch.tensor([example.input_ids]), torch.tensor(example.labels[1:]) != -100
            top1 = [load_model(m)(input_ids=ids).logits[0, :-1][mask].argmax(-1) for m in (nudged, tiny_llama)]
            same += int((top1[0] == top1[1]).sum())
            count += int(mask.sum())
    assert 0 < same < count  # the nudged copy agrees on some tokens, not all
    assert by_model["nudged"] == pytest.approx(same / count)
    assert by_model["llama"] == 1.0
    assert by_model["qwen2"] is None  # another chat template: the answers' tokens do not line up


def test_cli_prints_the_table(tuned, data_file):
    result = run_workbench("eval", tuned, "--data", data_file, "--max-new-tokens", "4", "--match", "contains",
                           "--side-by-side", "1")
    assert result.returncode == 0, result.stderr
    assert "| model | data | loss | bits/byte | ppl | token acc | answer contains |" in result.stdout
    assert "(baseline)" in result.stdout


def test_bad_inputs_are_one_line_errors_and_write_nothing(tuned, data_file, tmp_path):
    out = tmp_path / "never"
    result = run_workbench("eval", tuned, "--data", tmp_path / "nope.jsonl", "--out", out)
    assert result.returncode == 2 and result.stderr.strip().endswith("nope.jsonl: no such data file")
    with pytest.raises(CheckpointError, match="no config.json"):
        run(EvalConfig(models=[str(tmp_path)], data=[str(data_file)], out=str(out)))
    bad_regex = tmp_path / "bad-regex.jsonl"
    bad_regex.write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                                  {"role": "assistant", "content": "(unclosed"}]}) + "\n")
    with pytest.raises(DataError, match="bad-regex.jsonl:1: expected answer is not a valid regular expression"):
        run(EvalConfig(models=[str(tuned)], data=[str(bad_regex)], match="regex", out=str(out)))
    with pytest.raises(ConfigError, match="match must be one of exact, contains, regex"):
        run(EvalConfig(models=[str(tuned)], data=[str(data_file)], match="fuzzy", out=str(out)))
    assert not out.exists()
