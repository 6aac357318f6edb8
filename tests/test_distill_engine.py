"""The distillation engine end to end on tiny checkpoints: online and cached teacher, metrics
checked against a plain full-logits computation, bad inputs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tests.chat_runs import write_reversals
from tests.cli_helpers import run_workbench
from workbench.checkpoint import Checkpoint
from workbench.distill import DistillConfig, init_student, run
from workbench.distill.cache import build_teacher_cache
from workbench.errors import ConfigError
from workbench.modeling import load_model, load_tokenizer
from workbench.training.fields import config_from_dict

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.tiny_models import make_checkpoint

    root = tmp_path_factory.mktemp("distill")
    teacher = make_checkpoint(root / "teacher", arch="llama", layers=3, seed=1)
    student = init_student(teacher, root / "student", num_layers=2).path
    return {"teacher": teacher, "student": student, "data": write_reversals(root / "train.jsonl", 20),
            "val": write_reversals(root / "val.jsonl", 10, offset=100), "root": root}


def config(setup, out, **overrides) -> DistillConfig:
    values = dict(teacher=str(setup["teacher"]), student=str(setup["student"]), data=str(setup["data"]),
                  val_data=str(setup["val"]), out=str(out), epochs=1, batch_size=4, max_steps=3, lr=1e-2,
                  max_length=64, chunk_size=7, progress=False)
    values.update(overrides)
    return config_from_dict(DistillConfig, values)


def plain_validation_metrics(student_dir, teacher_dir, data_path, val_path, spec) -> dict:
    """KD loss, CE and agreement over the validation set from full logits of whole models."""
    from workbench.data import pad_collate, prepare_datasets

    tokenizer = load_tokenizer(student_dir)
    _, val, _ = prepare_datasets(data_path, tokenizer, 64, val_path=val_path)
    student, teacher = load_model(student_dir), load_model(teacher_dir)
    batch = pad_collate(val, pad_id=tokenizer.pad_token_id)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    with torch.no_grad():
        student_logits, teacher_logits = student(**inputs).logits[:, :-1], teacher(**inputs).logits[:, :-1]
    mask = batch["labels"][:, 1:] != -100
    s, t, y = student_logits[mask], teacher_logits[mask], batch["labels"][:, 1:][mask]
    s_logp, t_logp = F.log_softmax(s / spec.temperature, -1), F.log_softmax(t / spec.temperature, -1)
    kd = F.kl_div(t_logp, s_logp, reduction="batchmean", log_target=True)  # KL(student || teacher)
    return {"kd_loss": kd.item(), "student_ce": F.cross_entropy(s, y).item(),
            "teacher_agreement": (s.argmax(-1) == t.argmax(-1)).float().mean().item()}


def last_event(out) -> dict:
    return json.loads((out / "events.jsonl").read_text().splitlines()[-1])


def test_online_distillation_trains_and_reports_the_plain_validation_metrics(setup, tmp_path):
    cfg = config(setup, tmp_path / "out", temperature=2.0, alpha=0.5)
    result = run(cfg)
    before, after = Checkpoint(setup["student"]), Checkpoint(result.path)
    changed = [n for n in before.names() if not torch.equal(before.read(n), after.read(n))]
    assert changed, "distillation changed no weight"
    event = last_event(tmp_path / "out")
    expected = plain_validation_metrics(result.path, setup["teacher"], setup["data"], setup["val"],
                                        cfg.loss_spec)
    for name, value in expected.items():
        assert event[f"valid_{name}"] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert event["valid_loss"] == pytest.approx(
        0.5 * 4 * expected["kd_loss"] + 0.5 * expected["student_ce"], rel=1e-4)
    lineage = result.lineage
    assert lineage["kind"] == "distill" and set(lineage["inputs"]) >= {"teacher", "student", "data"}
    model = load_model(result.path)
    assert model.generate(torch.tensor([[5, 9, 11]]), max_new_tokens=2, do_sample=False).shape == (1, 5)


def test_cache_with_full_top_k_trains_the_same_student_as_the_online_teacher(setup, tmp_path):
    vocab = Checkpoint(setup["teacher"]).vocab_size
    cache = tmp_path / "cache"
    manifest = build_teacher_cache(str(setup["teacher"]), str(setup["data"]), str(cache), top_k=vocab,
                                   val_data=str(setup["val"]), max_length=64, temperature=2.0, dtype="float32")
    assert manifest["bytes_per_token"] == vocab * (2 + 4) + 4
    spec = dict(loss="jsd", beta=0.3, temperature=2.0, alpha=0.8, packing=True)  # cached rows follow packing
    online = run(config(setup, tmp_path / "online", **spec))
    offline = run(config(setup, tmp_path / "offline", teacher="", teacher_cache=str(cache), **spec))
    a, b = Checkpoint(online.path), Checkpoint(offline.path)
    for name in a.names():
        torch.testing.assert_close(b.read(name), a.read(name), rtol=1e-4, atol=1e-5)
    online_event, offline_event = last_event(tmp_path / "online"), last_event(tmp_path / "offline")
    for key in ("train_loss", "valid_loss", "valid_kd_loss", "valid_teacher_agreement"):
        assert offline_event[key] == pytest.approx(online_event[key], rel=1e-4, abs=1e-6), key


def test_online_teacher_top_k_trains_like_a_cache_of_the_same_k(setup, tmp_path):
    cache = tmp_path / "cache"
    build_teacher_cache(str(setup["teacher"]), str(setup["data"]), str(cache), top_k=5, val_data=str(setup["val"]),
                        max_length=64, dtype="float32")
    top_k = run(config(setup, tmp_path / "top_k", teacher_top_k=5))
    cached = run(config(setup, tmp_path / "cached", teacher="", teacher_cache=str(cache)))
    whole = run(config(setup, tmp_path / "whole"))
    a, b, c = Checkpoint(top_k.path), Checkpoint(cached.path), Checkpoint(whole.path)
    for name in a.names():
        torch.testing.assert_close(a.read(name), b.read(name), rtol=1e-4, atol=1e-5)
    assert any(not torch.allclose(a.read(name), c.read(name)) for name in a.names())


def test_cache_cli_reports_bytes_per_token_and_refuses_other_data(setup, tmp_path):
    cache = tmp_path / "cache"
    made = run_workbench("distill", "cache-teacher", "--teacher", setup["teacher"], "--data", setup["data"],
                         "--val-data", setup["val"], "--out", cache, "--top-k", "8", "--max-length", "64")
    assert made.returncode == 0, made.stderr
    assert "34 bytes/token" in made.stdout
    assert json.loads((cache / "teacher_cache.json").read_text())["bytes_per_token"] == 8 * 2 + 8 * 2 + 2

    other = write_reversals(tmp_path / "other.jsonl", 20, offset=50)
    with pytest.raises(ConfigError, match="made from other data"):
        run(config(setup, tmp_path / "a", data=str(other), teacher="", teacher_cache=str(cache)))
    with pytest.raises(ConfigError, match="made by another teacher"):
        run(config(setup, tmp_path / "b", teacher=str(setup["student"]), teacher_cache=str(cache)))
    with pytest.raises(ConfigError, match="temperature"):
        run(config(setup, tmp_path / "c", teacher="", teacher_cache=str(cache), temperature=2.0))
    assert not any((tmp_path / name).exists() for name in "abc")


def test_different_tokenizers_are_refused_and_nothing_is_written(setup, tiny_qwen2, tmp_path):
    with pytest.raises(ConfigError, match="different tokenizers"):
        run(config(setup, tmp_path / "out", teacher=str(tiny_qwen2)))
    assert not (tmp_path / "out").exists()


def test_a_student_larger_than_the_teacher_trains_with_a_warning(setup, tmp_path, capsys):
    run(config(setup, tmp_path / "out", teacher=str(setup["student"]), student=str(setup["teacher"]), max_steps=1))
    assert "warning: the student" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, warned", [
    (dict(), True), (dict(loss="jsd", beta=1.0), True), (dict(alpha=0.5), False),
    (dict(loss="forward_kl"), False), (dict(loss="jsd", beta=0.5), False),
])
def test_pure_reverse_kl_from_a_fresh_cut_warns(setup, tmp_path, capsys, overrides, warned):
    run(config(setup, tmp_path / "out", max_steps=1, **overrides))
    assert ("fresh `student init` cut" in capsys.readouterr().err) is warned


def test_pure_reverse_kl_from_a_trained_student_does_not_warn(setup, tmp_path, capsys):
    trained = run(config(setup, tmp_path / "healed", loss="forward_kl", max_steps=1)).path
    capsys.readouterr()
    run(config(setup, tmp_path / "out", student=str(trained), max_steps=1))
    assert "fresh `student init` cut" not in capsys.readouterr().err


@pytest.mark.parametrize("overrides, key", [
    (dict(beta=1.5), "beta"), (dict(beta=-0.1), "beta"), (dict(temperature=0.0), "temperature"),
    (dict(temperature=-1.0), "temperature"), (dict(alpha=1.1), "alpha"), (dict(alpha=-0.1), "alpha"),
    (dict(loss="kl"), "loss"), (dict(teacher="", teacher_cache=None), "teacher"),
    (dict(teacher_dtype="int8"), "teacher_dtype"), (dict(teacher_top_k=8, teacher_cache="c"), "teacher_top_k"),
])
def test_bad_settings_name_the_key(setup, tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=key):
        config(setup, tmp_path / "out", **overrides).validate()


def test_bad_beta_on_the_command_line_exits_2(setup, tmp_path):
    result = run_workbench("distill", "--teacher", setup["teacher"], "--student", setup["student"], "--data",
                           setup["data"], "--out", tmp_path / "out", "--loss", "jsd", "--beta", "2")
    assert result.returncode == 2 and "beta must be in [0, 1]" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cache_teacher_over_cpu_and_disk_writes_the_cache_of_a_whole_teacher(setup, tmp_path):
    from workbench.distill.placement import load_placed_model

    placed = load_placed_model(setup["teacher"], None, "cpu,disk", "cpu=150KB", str(tmp_path / "offload"))
    assert set(placed.hf_device_map.values()) == {"cpu", "disk"}  # the teacher is split between the two
    common = dict(top_k=8, val_data=str(setup["val"]), max_length=64)
    whole = build_teacher_cache(str(setup["teacher"]), str(setup["data"]), str(tmp_path / "whole"), **common)
    spread = build_teacher_cache(str(setup["teacher"]), str(setup["data"]), str(tmp_path / "spread"),
                                 device_map="cpu,disk", max_memory="cpu=150KB", **common)
    assert spread == whole
    assert (tmp_path / "spread" / "topk.safetensors").read_bytes() == (tmp_path / "whole" / "topk.safetensors").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the offload scratch is gone


# Placements cache-teacher refuses, each with the start of its one-line error.
BAD_PLACEMENTS = [
    (["--device-map", "cuda:7"], "--device-map: no device 'cuda:7' here; available: auto, "),
    (["--device-map", "cpu", "--max-memory", "cuda:0=1GB"], "--max-memory: 'cuda:0' is not a memory device"),
    (["--device-map", "auto", "--teacher-device", "cpu"], "--teacher-device and --device-map both place"),
]


@pytest.mark.parametrize("options, message", BAD_PLACEMENTS)
def test_cache_teacher_bad_placement_is_one_line_and_writes_nothing(setup, tmp_path, options, message):
    done = run_workbench("distill", "cache-teacher", "--teacher", setup["teacher"], "--data", setup["data"],
                         "--out", tmp_path / "cache", *options)
    assert done.returncode == 2 and done.stderr.startswith(f"error: {message}"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "cache").exists()
