"""A run blown up by a huge learning rate stops at the first NaN/inf and names as good only a
checkpoint whose weights are finite and gave a finite loss, from which resuming works."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_training import VOCAB, config, make_rows, pad
from tests.tiny_models import make_model
from workbench.training.loop import TrainingDivergedError, train
from workbench.training.objectives import causal_lm_objective
from workbench.training.distributed import Dist
from workbench.training.loop import ObjectiveModule, StepPlan, accumulate_gradients, all_finite
from workbench.training.optim import build_optimizer, build_scheduler
from workbench.training.state import latest_checkpoint, load_checkpoint


def huge_lr_run(run_dir: Path, lr: float) -> str:
    model = make_model("llama", vocab_size=VOCAB)
    with pytest.raises(TrainingDivergedError) as error:
        train(model, make_rows(16), [], pad, config(batch_size=2, save_every=1, lr=lr, max_grad_norm=1.0),
              run_dir, Dist(), causal_lm_objective)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_weights_whose_loss_is_nan_are_set_aside_not_named_good(tmp_path):
    """lr 1e10: step 1's update leaves finite weights (~1e10) whose loss at step 2 is NaN."""
    message = huge_lr_run(tmp_path, lr=1e10)
    assert re.search(r"loss became nan at step 2; .*no good checkpoint.*moved to diverged-step-0000001", message)
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["diverged-step-0000001"]
    weights = load_file(str(checkpoints / "diverged-step-0000001" / "trainable.safetensors"))
    assert max(t.abs().max().item() for t in weights.values()) > 1e8  # the blown-up weights, kept to inspect
    # Re-running does not resume from the blown-up weights: it starts again, and with a sane lr trains.
    assert latest_checkpoint(checkpoints, Dist()) is None
    model = make_model("llama", vocab_size=VOCAB)
    result = train(model, make_rows(16), [], pad, config(batch_size=2, lr=1e-3), tmp_path, Dist(),
                   causal_lm_objective)
    assert result.state.step == 8 and all(torch.isfinite(p).all() for p in model.parameters())


def test_checkpoint_named_good_has_finite_weights_and_loss_and_resumes(tmp_path):
    """lr 1e7: the weights after step 4 give an infinite gradient; step-3 is the good one, and
    resuming from it with a lower lr trains on."""
    message = huge_lr_run(tmp_path, lr=1e7)
    named = re.search(r"the last good checkpoint is (\S+step-\d+);", message)
    assert named, message
    good = Path(named.group(1))
    assert good.name == "step-0000003" and "moved to diverged-step-0000004" in message
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "diverged-step-0000004", "step-0000002", "step-0000003"]
    assert all(torch.isfinite(t).all() for t in load_file(str(good / "trainable.safetensors")).values())

    # Resume from it exactly as train() does: its first step's loss is finite, its state finite.
    cfg = config(batch_size=2, save_every=1, lr=1e7, max_grad_norm=1.0)
    rows = make_rows(16)
    model = make_model("llama", vocab_size=VOCAB)
    optimizer = build_optimizer(model, cfg, torch.device("cpu"))
    scheduler = build_scheduler(optimizer, cfg, 8)
    state = load_checkpoint(good, model, optimizer, scheduler, Dist())
    assert all_finite(list(model.parameters()), optimizer)
    plan = StepPlan(len(rows), 2, 1, 1, 1, 0)
    micro = [pad([rows[i] for i in ids]) for ids in plan.micro_batches(state.step, cfg.seed, 0)]
    loss_total, _, supervised = accumulate_gradients(ObjectiveModule(model, causal_lm_objective), micro, cfg, Dist())
    assert torch.isfinite(torch.tensor(loss_total / supervised))
    assert torch.isfinite(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))

    # Resuming the run with a sane lr uses that lr, not the one saved in the optimizer state.
    model = make_model("llama", vocab_size=VOCAB)
    result = train(model, rows, [], pad, config(batch_size=2, save_every=1, lr=1e-3, max_grad_norm=1.0),
                   tmp_path, Dist(), causal_lm_objective)
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert result.state.step == 8 and [e["lr"] for e in events[3:]] == [1e-3] * 5
    assert all(torch.isfinite(p).all() for p in model.parameters())
