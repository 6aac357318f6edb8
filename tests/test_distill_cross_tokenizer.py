"""Distillation across tokenizers: pairing of targets through the text, the ULD run end to end
against a whole-logits reference, exactness of packing / accumulation / resume, bad input.

The student speaks a byte-level BPE with a ChatML template, the teacher a sentencepiece-style
BPE (space marker, whole emoji and accented letters) with a Zephyr template."""

from __future__ import annotations

import json

import pytest
import torch

from tests.chat_runs import interrupted_copy, write_reversals
from tests.cli_helpers import run_workbench
from tests.test_distill_engine import BAD_PLACEMENTS
from tests.tiny_models import make_checkpoint, make_sentencepiece_tokenizer, make_tokenizer
from workbench.checkpoint import Checkpoint
from workbench.data import load_conversations
from workbench.data.loading import Conversation, Message
from workbench.distill import DistillConfig, run
from workbench.distill.cross_tokenizer.pairing import pair_targets, tokenize_with_keys
from workbench.distill.cross_tokenizer.uld import ULD_WEIGHT, uld_rows
from workbench.errors import ConfigError
from workbench.modeling import load_model, load_tokenizer
from workbench.training.fields import config_from_dict

ANSWERS = ["café crème \U0001F600 ok", " two plus two is four.", "olleh \U0001F600\U0001F600 hello", "paris 12"]


def conversation(answer: str, question: str = "say it") -> Conversation:
    return Conversation((Message("user", question), Message("assistant", answer)), "test:1")


def targets(example) -> list[int]:
    return [k for k in range(1, len(example.labels)) if example.labels[k] != -100]


def test_the_same_tokenizer_pairs_every_target_with_itself():
    tokenizer = make_tokenizer()
    for answer in ANSWERS:
        side = tokenize_with_keys(tokenizer, conversation(answer))
        n = len(targets(side.example))
        assert pair_targets(side.keys, side.keys) == [(i, i) for i in range(n)]


@pytest.mark.parametrize("answer", ANSWERS)
def test_paired_targets_continue_the_same_answer_text(answer):
    """For every pair, the answer text before the student's target is the text before the
    teacher's; byte pieces inside an emoji the teacher keeps whole stay unpaired; the
    end-of-turn tokens pair."""
    student_tok, teacher_tok = make_tokenizer(), make_sentencepiece_tokenizer()
    student, teacher = (tokenize_with_keys(t, conversation(answer)) for t in (student_tok, teacher_tok))
    pairs = pair_targets(student.keys, teacher.keys)
    s_targets, t_targets = targets(student.example), targets(teacher.example)

    def before(tokenizer, example, positions, i):
        return tokenizer.decode(example.input_ids[positions[0]:positions[i]]).replace(" ", "")

    for s, t in pairs:
        assert before(student_tok, student.example, s_targets, s) == before(teacher_tok, teacher.example, t_targets, t)
    assert pairs[-1] == (len(s_targets) - 1, len(t_targets) - 1)  # end of turn with end of turn
    emoji_bytes = answer.count("\U0001F600") * 3  # 4 byte tokens each, only the first starts at a character
    assert len(s_targets) - len(pairs) >= emoji_bytes
    assert len(pairs) >= len(t_targets) // 2


def write_chat(path, count, offset=0):
    """Answers that end in an emoji (4 bytes, split across byte tokens) or an accented word, every third plain."""
    return write_reversals(path, count, offset, suffix=lambda i: (" \U0001F600", " café", "")[i % 3])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cross")
    teacher = make_checkpoint(root / "teacher", layers=3, seed=1, tokenizer=make_sentencepiece_tokenizer())
    student = make_checkpoint(root / "student", layers=2, seed=2)
    return {"teacher": teacher, "student": student, "data": write_chat(root / "train.jsonl", 20),
            "val": write_chat(root / "val.jsonl", 10, offset=100)}


def config(setup, out, **overrides) -> DistillConfig:
    values = dict(teacher=str(setup["teacher"]), student=str(setup["student"]), data=str(setup["data"]),
                  val_data=str(setup["val"]), out=str(out), epochs=1, batch_size=4, max_steps=3, lr=1e-2,
                  max_length=64, chunk_size=7, progress=False, cross_tokenizer="uld")
    values.update(overrides)
    return config_from_dict(DistillConfig, values)


def last_event(out) -> dict:
    return json.loads((out / "events.jsonl").read_text().splitlines()[-1])


def plain_uld_metrics(student_dir, teacher_dir, val_path) -> dict:
    """Validation CE and ULD per supervised student token, one conversation at a time, whole logits."""
    student_tok, teacher_tok = load_tokenizer(student_dir), load_tokenizer(teacher_dir)
    student, teacher = load_model(student_dir), load_model(teacher_dir)
    ce = uld = count = 0.0
    with torch.no_grad():
        for conv in load_conversations(val_path):
            s, t = tokenize_with_keys(student_tok, conv), tokenize_with_keys(teacher_tok, conv)
            s_pos, t_pos = targets(s.example), targets(t.example)
            s_logits = student(input_ids=torch.tensor([s.example.input_ids])).logits[0]
            t_logits = teacher(input_ids=torch.tensor([t.example.input_ids])).logits[0]
            labels = torch.tensor([s.example.labels[k] for k in s_pos])
            ce += torch.nn.functional.cross_entropy(s_logits[[k - 1 for k in s_pos]], labels, reduction="sum").item()
            for i, j in pair_targets(s.keys, t.keys):
                q = torch.softmax(s_logits[s_pos[i] - 1], -1)[None]
                p = torch.softmax(t_logits[t_pos[j] - 1], -1)[None]
                uld += uld_rows(q, p).item()
            count += len(s_pos)
    return {"student_ce": ce / count, "kd_loss": uld / count}


def test_uld_distillation_trains_and_reports_the_whole_logits_validation_metrics(setup, tmp_path):
    result = run(config(setup, tmp_path / "out"))
    before, after = Checkpoint(setup["student"]), Checkpoint(result.path)
    assert any(not torch.equal(before.read(n), after.read(n)) for n in before.names())
    event = last_event(tmp_path / "out")
    expected = plain_uld_metrics(result.path, setup["teacher"], setup["val"])
    for name, value in expected.items():
        assert event[f"valid_{name}"] == pytest.approx(value, rel=1e-4), name
    assert event["valid_loss"] == pytest.approx(expected["student_ce"] + ULD_WEIGHT * expected["kd_loss"], rel=1e-4)
    assert 0.3 < event["valid_paired"] < 1.0  # emoji bytes and split words leave some targets unpaired


def test_accumulation_trains_the_same_student(setup, tmp_path):
    plain = run(config(setup, tmp_path / "plain", max_steps=2))
    accumulated = run(config(setup, tmp_path / "accum", max_steps=2, batch_size=2, grad_accum=2))
    a, b = Checkpoint(plain.path), Checkpoint(accumulated.path)
    for name in a.names():
        torch.testing.assert_close(b.read(name), a.read(name), rtol=1e-4, atol=1e-5)


def test_an_interrupted_run_resumes_to_identical_weights(setup, tmp_path):
    from safetensors.torch import load_file

    settings = dict(max_steps=4, save_every=2)
    straight = run(config(setup, tmp_path / "straight", **settings)).path
    interrupted = interrupted_copy(straight, tmp_path / "interrupted", "step-0000004")
    resumed = run(config(setup, interrupted, **settings)).path
    expected, got = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    for name in expected:
        assert torch.equal(got[name], expected[name]), f"{name} differs after resuming at step 2"


@pytest.mark.parametrize("mode", ["uld", "align"])
def test_a_packed_batch_gives_the_loss_and_gradients_of_the_same_examples_padded(setup, mode):
    """(align: with spans merged on the student side, emoji bytes and split words)"""
    from functools import partial

    from workbench.data import pack_examples, packed_collate, pad_collate, prepare_datasets
    from workbench.distill.cross_tokenizer.data import conversations_by_source, cross_collate, cross_examples
    from workbench.distill.cross_tokenizer.objective import CrossTokenizerObjective

    student_tok, teacher_tok = load_tokenizer(setup["student"]), load_tokenizer(setup["teacher"])
    train, _, _ = prepare_datasets(setup["data"], student_tok, 64, val_split=0.1)
    rows = cross_examples(train[:6], conversations_by_source(setup["data"]), student_tok, teacher_tok, 64)
    model = load_model(setup["student"])
    objective = CrossTokenizerObjective(mode, load_model(setup["teacher"]), torch.device("cpu"),
                                        spec=DistillConfig().loss_spec, uld_weight=ULD_WEIGHT, chunk_size=5,
                                        tokenizers=(student_tok, teacher_tok))
    assert any(s_end > s + 1 for row in rows for (s, _), (s_end, _) in zip(row.pairs, row.span_ends))
    results = []
    for collate, items in ((pad_collate, rows), (packed_collate, pack_examples(rows, 128))):
        assert len(items) == (6 if collate is pad_collate else 2)
        batch = cross_collate(partial(collate, pad_id=0), partial(collate, pad_id=0))(items)
        model.zero_grad()
        loss, count, _, extra = objective(model, batch)
        loss.backward()
        results.append((loss.item(), count, extra["paired"], [p.grad.clone() for p in model.parameters()]))
    (loss_a, count_a, paired_a, grads_a), (loss_b, count_b, paired_b, grads_b) = results
    assert (count_a, paired_a) == (count_b, paired_b) and loss_b == pytest.approx(loss_a, rel=1e-5)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_cli_runs_uld_and_without_the_flag_names_it(setup, tmp_path):
    args = ["distill", "--teacher", setup["teacher"], "--student", setup["student"], "--data", setup["data"],
            "--max-steps", "1", "--max-length", "64", "--batch-size", "4", "--no-progress"]
    refused = run_workbench(*args, "--out", tmp_path / "plain")
    assert refused.returncode == 2 and "--cross-tokenizer uld" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "plain").exists()
    made = run_workbench(*args, "--out", tmp_path / "uld", "--cross-tokenizer", "uld")
    assert made.returncode == 0, made.stderr
    assert Checkpoint(tmp_path / "uld").lineage["parameters"]["cross_tokenizer"] == "uld"


def test_bad_cross_tokenizer_input_is_one_line_and_writes_nothing(setup, tmp_path):
    same = run_workbench("distill", "--teacher", setup["student"], "--student", setup["student"], "--data",
                         setup["data"], "--out", tmp_path / "same", "--cross-tokenizer", "uld")
    assert same.returncode == 2 and "--cross-tokenizer is not needed" in same.stderr
    unknown = run_workbench("distill", "--teacher", setup["teacher"], "--student", setup["student"], "--data",
                            setup["data"], "--out", tmp_path / "unknown", "--cross-tokenizer", "dtw")
    assert unknown.returncode == 2 and "cross_tokenizer must be one of uld" in unknown.stderr
    with pytest.raises(ConfigError, match="on_policy is not supported with cross_tokenizer"):
        run(config(setup, tmp_path / "sampled", on_policy=0.5))
    with pytest.raises(ConfigError, match="alpha is not supported with cross_tokenizer uld"):
        run(config(setup, tmp_path / "mixed", alpha=0.5))
    assert not any((tmp_path / name).exists() for name in ("same", "unknown", "sampled", "mixed"))


def test_a_tokenizer_without_offsets_is_named():
    from workbench.distill.cross_tokenizer.objective import check_cross_tokenizers

    class SlowTokenizer:
        is_fast = False

        def get_vocab(self):
            return {"a": 0}

    with pytest.raises(ConfigError, match=r"teacher-dir: the tokenizer \(SlowTokenizer\) gives no character offsets"):
        check_cross_tokenizers(make_tokenizer(), SlowTokenizer(), "student-dir", "teacher-dir")


def test_align_distillation_trains_with_mapped_and_unmapped_terms(setup, tmp_path):
    result = run(config(setup, tmp_path / "align", cross_tokenizer="align", loss="forward_kl", alpha=0.5))
    before, after = Checkpoint(setup["student"]), Checkpoint(result.path)
    assert any(not torch.equal(before.read(n), after.read(n)) for n in before.names())
    event = last_event(tmp_path / "align")
    assert event["valid_unmapped_uld"] > 0 and 0.3 < event["valid_paired"] < 1.0
    assert event["valid_loss"] == pytest.approx(0.5 * event["valid_kd_loss"] + ULD_WEIGHT * event["valid_unmapped_uld"]
                                                + 0.5 * event["valid_student_ce"], rel=1e-5)


@pytest.mark.parametrize("mode", ["uld", "align"])
def test_a_cache_with_the_whole_vocab_trains_the_same_student_as_the_online_teacher(setup, tmp_path, mode):
    from workbench.distill.cross_tokenizer.cache import build_cross_teacher_cache

    vocab = Checkpoint(setup["teacher"]).vocab_size
    cache = tmp_path / "cache"
    manifest = build_cross_teacher_cache(str(setup["teacher"]), str(setup["student"]), str(setup["data"]),
                                         str(cache), mode=mode, top_k=vocab, val_data=str(setup["val"]),
                                         max_length=128, dtype="float32")
    assert manifest["cross_tokenizer"] == mode and manifest["tokens"] < manifest["examples"] * 64
    settings = dict(cross_tokenizer=mode, packing=True, max_length=128)
    online = run(config(setup, tmp_path / "online", **settings))
    offline = run(config(setup, tmp_path / "offline", teacher="", teacher_cache=str(cache), **settings))
    a, b = Checkpoint(online.path), Checkpoint(offline.path)
    for name in a.names():
        torch.testing.assert_close(b.read(name), a.read(name), rtol=1e-4, atol=1e-5)
    for key in ("valid_loss", "valid_kd_loss", "valid_paired"):
        assert last_event(tmp_path / "offline")[key] == pytest.approx(last_event(tmp_path / "online")[key], rel=1e-4)


def test_a_cache_for_another_mode_or_student_tokenizer_is_refused(setup, tmp_path):
    made = run_workbench("distill", "cache-teacher", "--teacher", setup["teacher"], "--data", setup["data"],
                         "--val-data", setup["val"], "--out", tmp_path / "cache", "--top-k", "8", "--max-length", "64",
                         "--cross-tokenizer", "uld", "--student", setup["student"])
    assert made.returncode == 0, made.stderr
    assert "bytes/token" in made.stdout
    cached = dict(teacher="", teacher_cache=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="made for --cross-tokenizer uld, this run uses --cross-tokenizer align"):
        run(config(setup, tmp_path / "a", cross_tokenizer="align", **cached))
    with pytest.raises(ConfigError, match="made for --cross-tokenizer uld, this run uses the same tokenizer"):
        run(config(setup, tmp_path / "b", cross_tokenizer=None, **cached))
    other_student = make_checkpoint(tmp_path / "other", layers=2, seed=2, tokenizer=make_tokenizer(vocab_size=300))
    with pytest.raises(ConfigError, match="made for another student tokenizer"):
        run(config(setup, tmp_path / "c", student=str(other_student), **cached))
    assert not any((tmp_path / name).exists() for name in "abc")


def test_the_fresh_cut_reverse_kl_warning_is_not_given_for_uld(setup, tmp_path):
    from types import SimpleNamespace

    from workbench.distill.engine import reverse_kl_from_a_fresh_cut
    from workbench.distill.student import LINEAGE_KIND

    fresh_cut = SimpleNamespace(lineage={"kind": LINEAGE_KIND})
    assert not reverse_kl_from_a_fresh_cut(fresh_cut, config(setup, tmp_path, cross_tokenizer="uld"))
    assert reverse_kl_from_a_fresh_cut(fresh_cut, config(setup, tmp_path, cross_tokenizer="align"))


def test_an_align_cache_without_span_rows_is_refused(setup, tmp_path):
    """A cache made before align merged spans lacks their rows: remake it, not train without them."""
    from safetensors.torch import load_file, save_file

    from workbench.distill.cross_tokenizer.cache import build_cross_teacher_cache

    cache = tmp_path / "cache"
    build_cross_teacher_cache(str(setup["teacher"]), str(setup["student"]), str(setup["data"]), str(cache),
                              mode="align", top_k=8, val_data=str(setup["val"]), max_length=64)
    tensors = load_file(str(cache / "topk.safetensors"))
    assert tensors["span_teacher_logprob"].lt(0).any()  # the teacher's continuation tokens were scored
    save_file({k: v for k, v in tensors.items() if not k.startswith("span_")}, str(cache / "topk.safetensors"))
    with pytest.raises(ConfigError, match="holds no span log-probabilities .*; remake it"):
        run(config(setup, tmp_path / "out", cross_tokenizer="align", teacher="", teacher_cache=str(cache)))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["uld", "align"])
def test_a_cross_cache_with_the_teacher_over_cpu_and_disk_is_the_cache_of_a_whole_teacher(setup, tmp_path, mode):
    from workbench.distill.placement import load_placed_model

    placed = load_placed_model(setup["teacher"], None, "cpu,disk", "cpu=150KB", str(tmp_path / "offload"))
    assert set(placed.hf_device_map.values()) == {"cpu", "disk"}  # the teacher is split between the two
    args = ["distill", "cache-teacher", "--teacher", setup["teacher"], "--data", setup["data"], "--val-data",
            setup["val"], "--top-k", "8", "--max-length", "64", "--cross-tokenizer", mode, "--student",
            setup["student"]]
    whole = run_workbench(*args, "--out", tmp_path / "whole")
    spread = run_workbench(*args, "--out", tmp_path / "spread", "--device-map", "cpu,disk", "--max-memory",
                           "cpu=150KB")
    assert whole.returncode == 0 and spread.returncode == 0, whole.stderr + spread.stderr
    assert (tmp_path / "spread" / "teacher_cache.json").read_text() == (tmp_path / "whole" / "teacher_cache.json").read_text()
    assert (tmp_path / "spread" / "topk.safetensors").read_bytes() == (tmp_path / "whole" / "topk.safetensors").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the offload scratch is gone


@pytest.mark.parametrize("options, message", [
    *BAD_PLACEMENTS,
    (["--max-memory", "cpu=1GB"], "--max-memory caps what --device-map puts on each device"),
])
def test_cross_cache_bad_placement_is_one_line_and_writes_nothing(setup, tmp_path, options, message):
    done = run_workbench("distill", "cache-teacher", "--teacher", setup["teacher"], "--data", setup["data"],
                         "--out", tmp_path / "cache", "--cross-tokenizer", "align", "--student", setup["student"],
                         *options)
    assert done.returncode == 2 and done.stderr.startswith(f"error: {message}"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "cache").exists()
