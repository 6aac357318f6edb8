"""The shared training loop on tiny random models and synthetic token rows."""

from __future__ import annotations

import copy
import json
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from tests.tiny_models import make_model
from workbench.data import TokenizedExample, pack_examples, packed_collate, pad_collate
from workbench.errors import ConfigError
from workbench.training.config import TrainingConfig
from workbench.training.loop import TrainingDivergedError, train
from workbench.training.objectives import causal_lm_objective
from workbench.training.distributed import Dist
from workbench.training.loop import ObjectiveModule, StepPlan, accumulate_gradients
from workbench.training.optim import lr_multiplier

VOCAB = 384


def make_rows(count: int, seed: int = 0) -> list[TokenizedExample]:
    """Rows of varying length whose second half is supervised (like a prompt + answer)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(count):
        length = 6 + (i * 5) % 11
        ids = torch.randint(1, VOCAB, (length,), generator=generator).tolist()
        labels = [-100] * (length // 2) + ids[length // 2:]
        rows.append(TokenizedExample(ids, labels))
    return rows


pad = partial(pad_collate, pad_id=0)


def config(**overrides) -> TrainingConfig:
    values = dict(epochs=1, batch_size=4, lr=1e-2, schedule="constant", max_grad_norm=0.0,
                  precision="fp32", progress=False)
    values.update(overrides)
    return TrainingConfig(**values)


def test_accumulated_gradient_equals_full_batch_autograd_reference():
    model = make_model("llama", vocab_size=VOCAB)
    reference = copy.deepcopy(model)
    rows = make_rows(4)
    micro = [pad(rows[:1]), pad(rows[1:])]  # 1 + 3 examples: unequal supervised counts

    loss_total, _, supervised = accumulate_gradients(
        ObjectiveModule(model, causal_lm_objective), micro, config(), Dist())

    full = pad(rows)
    logits = reference(input_ids=full["input_ids"], attention_mask=full["attention_mask"]).logits
    expected_loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), full["labels"][:, 1:].reshape(-1),
                                    ignore_index=-100)
    expected_loss.backward()
    assert supervised == int((full["labels"][:, 1:] != -100).sum())
    assert loss_total / supervised == pytest.approx(expected_loss.item(), rel=1e-5)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_grad_accum_two_micro_batches_trains_like_one_big_batch(tmp_path):
    rows = make_rows(8)
    weights = []
    for batch_size, accum in ((4, 1), (2, 2)):
        model = make_model("llama", vocab_size=VOCAB)
        train(model, rows, [], pad, config(batch_size=batch_size, grad_accum=accum, epochs=2, max_grad_norm=1.0),
              tmp_path / f"accum{accum}", Dist(), causal_lm_objective)
        weights.append(dict(model.named_parameters()))
    for name, p in weights[0].items():
        torch.testing.assert_close(p, weights[1][name], atol=2e-5, rtol=1e-4, msg=name)


def test_loss_decreases_when_overfitting_a_few_examples(tmp_path):
    model = make_model("llama", vocab_size=VOCAB)
    rows = make_rows(4)
    result = train(model, rows, rows, pad, config(epochs=40, lr=3e-3), tmp_path, Dist(),
                   causal_lm_objective)
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    losses = [e["train_loss"] for e in events]
    assert len(losses) == 40 and result.state.step == 40
    assert losses[-1] < 0.3 * losses[0]
    assert sum(losses[-5:]) < sum(losses[:5])
    assert {"step", "total_steps", "train_loss", "valid_loss", "train_mean_token_accuracy",
            "valid_mean_token_accuracy", "lr", "tokens_per_second", "elapsed"} <= set(events[-1])
    assert result.metrics["valid_mean_token_accuracy"] > 0.5
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    best = json.loads((tmp_path / "checkpoints" / "best.json").read_text())
    assert best["checkpoint"] in checkpoints and len(checkpoints) <= 4


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    """Step 3's loss is computed on step-2's weights: those gave NaN, so step-2 is set aside and
    step-1 (whose weights gave step 2 a finite loss) is the one named good."""
    calls = {"n": 0}

    def objective(model, batch):
        calls["n"] += 1
        loss_sum, count, correct = causal_lm_objective(model, batch)
        return (loss_sum * math.nan if calls["n"] == 3 else loss_sum), count, correct

    model = make_model("llama", vocab_size=VOCAB)
    with pytest.raises(TrainingDivergedError,
                       match=r"loss became nan at step 3.*last good checkpoint is \S*step-0000001\b.*"
                             r"moved to diverged-step-0000002"):
        train(model, make_rows(8), [], pad, config(batch_size=2, save_every=1), tmp_path, Dist(), objective)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["diverged-step-0000002",
                                                                            "step-0000001"]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_early_stopping_after_patience_evaluations_without_improvement(tmp_path):
    model = make_model("llama", vocab_size=VOCAB)
    rows = make_rows(8)
    # A high learning rate on random validation targets: validation loss soon stops improving.
    result = train(model, rows[:4], rows[4:], pad, config(epochs=50, lr=5e-2, patience=2), tmp_path,
                   Dist(), causal_lm_objective)
    assert result.state.stopped_early and result.state.step < 50
    assert result.state.evals_without_improvement == 2


def test_step_plan_shards_each_global_batch_over_ranks_and_micro_batches():
    plan = StepPlan(num_rows=10, batch_size=1, grad_accum=2, world_size=2, epochs=2, max_steps=0)
    assert plan.global_batch_size == 4 and plan.steps_per_epoch == 3 and plan.total_steps == 6
    for step in range(6):
        shards = [plan.micro_batches(step, seed=0, rank=r) for r in (0, 1)]
        flat = [i for rank in shards for micro in rank for i in micro]
        assert flat == plan.global_batch(step, seed=0) and all(len(m) == 1 for r in shards for m in r)
    epoch = [i for step in range(3) for i in plan.global_batch(step, seed=0)]
    assert set(epoch) == set(range(10))  # every row once per epoch, the last batch wraps around


def test_learning_rate_schedules():
    assert lr_multiplier(0, 2, 10, "cosine") == 0.5 and lr_multiplier(1, 2, 10, "cosine") == 1.0
    assert lr_multiplier(2, 2, 10, "cosine") == 1.0
    assert lr_multiplier(6, 2, 10, "cosine") == pytest.approx(0.5)
    assert lr_multiplier(6, 2, 10, "linear") == pytest.approx(0.5)
    assert lr_multiplier(9, 2, 10, "constant") == 1.0


@pytest.mark.parametrize("ours, theirs", [("linear", "linear"), ("cosine", "cosine"),
                                          ("constant", "constant_with_warmup")])
def test_schedules_match_transformers_but_for_warmup_running_one_step_ahead(ours, theirs):
    """Why lr_multiplier is not transformers.get_scheduler: the values differ during warmup
    (theirs starts at lr 0), and only there."""
    from transformers import get_scheduler

    total, warmup = 10, 3
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler(theirs, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    reference = []
    for _ in range(total + 1):
        reference.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert reference[0] == 0.0
    for step in range(total):
        if step < warmup:
            assert lr_multiplier(step, warmup, total, ours) == pytest.approx(reference[step + 1], abs=1e-12)
            assert lr_multiplier(step, warmup, total, ours) != reference[step]
        else:
            assert lr_multiplier(step, warmup, total, ours) == pytest.approx(reference[step], abs=1e-12)


@pytest.mark.parametrize("key, value, message", [
    ("batch_size", 0, "batch_size must be a positive integer"),
    ("lr", 0.0, "lr must be > 0"),
    ("lr", -1e-3, "lr must be > 0"),
    ("schedule", "cosin", "schedule must be one of"),
    ("precision", "fp16", "precision must be one of"),
])
def test_config_validation_names_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        config(**{key: value}).validate()


def test_objective_gives_the_same_loss_on_packed_and_padded_rows():
    model = make_model("llama", vocab_size=VOCAB)
    rows = make_rows(6)
    with torch.no_grad():
        padded = causal_lm_objective(model, pad(rows))
        packed = causal_lm_objective(model, packed_collate(pack_examples(rows, 40)))
    assert len(pack_examples(rows, 40)) < len(rows)
    assert packed[1] == padded[1] and packed[2] == padded[2]
    assert packed[0].item() == pytest.approx(padded[0].item(), rel=1e-5)


def test_bf16_precision_trains_under_autocast_with_fp32_master_weights(tmp_path):
    seen = []

    def objective(model, batch):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return causal_lm_objective(model, batch)

    model = make_model("llama", vocab_size=VOCAB)
    result = train(model, make_rows(8), [], pad, config(precision="bf16", epochs=3), tmp_path, Dist(), objective)
    assert seen and all(seen)
    assert math.isfinite(result.metrics["train_loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())
