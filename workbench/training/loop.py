"""The one training loop, shared by SFT and distillation; only the objective differs.

Read ``train`` top to bottom: it is the whole algorithm. Per optimizer step:

1. take the step's global batch from a shuffle that depends only on (seed, epoch), so the
   step number alone is the data position and resume is exact;
2. give each data-parallel rank its contiguous shard, split into ``grad_accum`` micro-batches;
3. count the supervised tokens of *all* micro-batches of *all* ranks first, then backpropagate
   each micro-batch's ``loss_sum / that total``: the gradient is the mean over every supervised
   token of the global batch, whatever the accumulation or process count;
4. stop with an error on a NaN/inf loss or gradient before the optimizer touches the weights; the
   checkpoint of the weights that gave it is moved aside, so the one named good (and resumed from)
   has finite weights that gave a finite loss and gradient;
5. clip, step, schedule, log, validate, checkpoint (only finite weights and optimizer state),
   maybe stop early.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from workbench.errors import ConfigError, WorkbenchError
from workbench.training.config import TrainingConfig
from workbench.training.distributed import Dist, all_reduce_sum, broadcast_object
from workbench.training.events import EVENTS_FILE, EventLog, read_events
from workbench.training.fields import flat_values
from workbench.data import epoch_order
from workbench.training.objectives import count_supervised
from workbench.training.optim import apply_current_settings, build_optimizer, build_scheduler
from workbench.training.state import (
    DIVERGED_PREFIX,
    PREFIX,
    LoopState,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
    set_aside_diverged,
)

Objective = Callable[[torch.nn.Module, dict], tuple]
CHECKPOINTS_DIR = "checkpoints"


class TrainingDivergedError(WorkbenchError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    state: LoopState
    total_steps: int
    metrics: dict = field(default_factory=dict)


class ObjectiveModule(torch.nn.Module):
    """Puts the objective inside forward(), so DistributedDataParallel and FSDP see one module
    call per micro-batch however the objective reaches into the model (FSDP gathers the root's
    parameters for exactly that call). The objective itself is not registered as a submodule
    (a distillation teacher must not be synchronized); validation passes its own."""

    def __init__(self, model: torch.nn.Module, objective: Objective):
        super().__init__()
        self.model = model
        object.__setattr__(self, "objective", objective)

    def forward(self, batch: dict, objective: Objective | None = None):
        return (objective or self.objective)(self.model, batch)


@dataclass(frozen=True)
class StepPlan:
    """How the data is cut into steps: global batch -> ranks -> micro-batches of batch_size."""

    num_rows: int
    batch_size: int
    grad_accum: int
    world_size: int
    epochs: int
    max_steps: int

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.num_rows / self.global_batch_size)

    @property
    def total_steps(self) -> int:
        total = self.epochs * self.steps_per_epoch
        return min(total, self.max_steps) if self.max_steps else total

    def global_batch(self, step: int, seed: int) -> list[int]:
        """Row indices of a step. The epoch's last batch wraps around to the epoch's start, so
        every step has the same size and every rank the same number of micro-batches."""
        epoch, index = divmod(step, self.steps_per_epoch)
        order = epoch_order(self.num_rows, seed, epoch)
        start = index * self.global_batch_size
        return [order[(start + j) % self.num_rows] for j in range(self.global_batch_size)]

    def micro_batches(self, step: int, seed: int, rank: int) -> list[list[int]]:
        per_rank = self.batch_size * self.grad_accum
        mine = self.global_batch(step, seed)[rank * per_rank:(rank + 1) * per_rank]
        return [mine[i * self.batch_size:(i + 1) * self.batch_size] for i in range(self.grad_accum)]


def autocast_context(precision: str, device: torch.device, fsdp: bool = False):
    """bf16 autocast when asked for (or, for 'auto', on a GPU that supports it); else fp32.
    Under FSDP its MixedPrecisionPolicy casts the parameters instead (``training.fsdp``)."""
    if fsdp:
        return nullcontext()
    gpu_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "bf16" and device.type == "cuda" and not gpu_bf16:
        raise ConfigError("precision bf16: this GPU does not support bfloat16; use fp32")
    if precision == "bf16" or (precision == "auto" and gpu_bf16):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def batch_tokens(batch: dict) -> int:
    mask = batch.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        return int(mask.sum())
    return batch["input_ids"].numel()


def accumulate_gradients(runner, micro: list[dict], config: TrainingConfig, ctx: Dist
                         ) -> tuple[float, float, float]:
    """Backpropagate this rank's micro-batches so the summed gradients over all ranks equal the
    gradient of (sum of token losses of the global batch) / (its supervised tokens).

    The supervised tokens of every micro-batch on every rank are counted before any forward
    pass. DDP and FSDP average gradients over ranks, hence the world_size factor.
    Returns the global loss sum, correct-token count and supervised-token count.
    """
    local = torch.tensor([float(sum(count_supervised(b) for b in micro))], device=ctx.device)
    global_supervised = all_reduce_sum(local, ctx).item()
    if global_supervised == 0:
        raise WorkbenchError("a global batch has no supervised token")
    totals = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    for i, batch in enumerate(micro):
        last = i == len(micro) - 1
        # DDP all-reduces once per step; FSDP reduce-scatters every micro-batch (sharded gradients)
        with nullcontext() if last or not hasattr(runner, "no_sync") else runner.no_sync():
            with autocast_context(config.precision, ctx.device, config.fsdp):
                loss_sum, _, correct, *_ = runner(batch)
            (loss_sum * (ctx.world_size / global_supervised)).backward()
        totals += torch.stack([loss_sum.detach().double(), torch.as_tensor(correct).double()])
    loss_total, correct_total = all_reduce_sum(totals, ctx).tolist()
    return loss_total, correct_total, global_supervised


@torch.no_grad()
def evaluate(runner: ObjectiveModule, rows: Sequence, collate, objective: Objective, batch_size: int,
             config: TrainingConfig, ctx: Dist) -> tuple[float, float, dict[str, float]]:
    """Mean loss, token accuracy and extra metrics over all supervised tokens of the validation
    rows. An objective may return a 4th element, a dict of sums over its supervised tokens
    (a distillation objective's KD loss, student cross-entropy, teacher agreement): each is
    reported as its mean per supervised token.

    Every rank runs the same number of forward passes, because under FSDP each one gathers
    parameters with all the others: a rank whose share ran out repeats its last batch (or the
    first rows) and discards the result."""
    runner.eval()
    mine = list(range(ctx.rank, len(rows), ctx.world_size))
    passes = math.ceil(math.ceil(len(rows) / ctx.world_size) / batch_size)
    totals, extra_names = None, []
    for index in range(passes):
        ids = mine[index * batch_size:(index + 1) * batch_size]
        batch = to_device(collate([rows[i] for i in ids or mine[-batch_size:] or [0]]), ctx.device)
        with autocast_context(config.precision, ctx.device, config.fsdp):
            loss_sum, count, correct, *more = runner(batch, objective)
        extra = more[0] if more else {}
        extra_names = sorted(extra)
        values = [float(loss_sum), float(count), float(correct)] + [float(extra[k]) for k in extra_names]
        step_totals = torch.tensor(values, dtype=torch.float64, device=ctx.device) * bool(ids)
        totals = step_totals if totals is None else totals + step_totals
    runner.train()
    if hasattr(runner, "reshard"):
        runner.reshard()  # FSDP keeps the root gathered after a forward that no backward follows
    if totals is None:  # this rank got no validation row
        totals = torch.zeros(3, dtype=torch.float64, device=ctx.device)
    loss_sum, count, correct, *extra_sums = all_reduce_sum(totals, ctx).tolist()
    count = max(count, 1)
    return loss_sum / count, correct / count, {k: v / count for k, v in zip(extra_names, extra_sums)}


def train(model: torch.nn.Module, train_rows: Sequence, val_rows: Sequence, collate,
          config: TrainingConfig, run_dir: Path, ctx: Dist, objective: Objective,
          eval_objective: Objective | None = None) -> TrainResult:
    """Train ``model`` in place on ``train_rows`` and return the final loop state and metrics.

    Resumes from the newest checkpoint in RUN_DIR/checkpoints when there is one (the caller
    decides whether an existing run directory may be continued). ``collate`` turns a list of
    rows into a batch dict; ``objective`` is described in ``workbench.training.objectives``.
    """
    eval_objective = eval_objective or objective
    plan = StepPlan(len(train_rows), config.batch_size, config.grad_accum, ctx.world_size,
                    config.epochs, config.max_steps)
    total_steps = plan.total_steps
    checkpoints_dir = run_dir / CHECKPOINTS_DIR
    training_fields = flat_values(config)

    model.train()
    objective_module = runner = ObjectiveModule(model, objective)
    if config.fsdp:
        from workbench.training.fsdp import shard_model

        shard_model(objective_module, model, ctx, config.precision,  # in place: parameters become shards
                    vocab_sharded_head=getattr(objective, "reads_vocab_shards", False))
    else:
        model.to(ctx.device)
    if ctx.enabled and not config.fsdp:
        from torch.nn.parallel import DistributedDataParallel

        runner = DistributedDataParallel(
            objective_module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    optimizer = build_optimizer(model, config, ctx.device)
    scheduler = build_scheduler(optimizer, config, total_steps)

    resume_from = latest_checkpoint(checkpoints_dir, ctx)
    if resume_from is not None:
        state = load_checkpoint(resume_from, model, optimizer, scheduler, ctx)
        apply_current_settings(optimizer, scheduler, config)
    else:
        state = LoopState()
        seed_everything(config.seed + ctx.rank)
    events = EventLog(run_dir, ctx.is_main, resume_step=state.step)
    progress = _progress_bar(config, ctx, state.step, total_steps)
    trainable = [p for p in model.parameters() if p.requires_grad]
    train_seconds, tokens_seen = 0.0, 0

    while state.step < total_steps and not state.stopped_early:
        step_started = time.perf_counter()
        # 1-2. this rank's micro-batches of the step's global batch
        micro = [to_device(collate([train_rows[i] for i in ids]), ctx.device)
                 for ids in plan.micro_batches(state.step, config.seed, ctx.rank)]
        # 3. gradient of the mean over every supervised token of the global batch
        loss_total, correct_total, global_supervised = accumulate_gradients(runner, micro, config, ctx)
        tokens_seen += sum(batch_tokens(b) for b in micro) * ctx.world_size
        train_loss = loss_total / global_supervised
        # 4. never step on a NaN/inf loss
        if not math.isfinite(train_loss):
            raise diverged(checkpoints_dir, state.step, f"loss became {train_loss} at step {state.step + 1}", ctx)
        # 5. clip (a non-finite gradient, like a non-finite loss, condemns these weights), step, schedule
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm or math.inf)
        if not torch.isfinite(grad_norm):
            raise diverged(checkpoints_dir, state.step, f"gradient norm became {grad_norm.item()} at step "
                           f"{state.step + 1} (loss {train_loss:.4g})", ctx)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        train_seconds += time.perf_counter() - step_started
        state.elapsed += time.perf_counter() - step_started

        event = {"step": state.step, "total_steps": total_steps,
                 "epoch": (state.step - 1) // plan.steps_per_epoch + 1,
                 "train_loss": train_loss, "train_mean_token_accuracy": correct_total / global_supervised,
                 "lr": lr, "tokens_per_second": tokens_seen / max(train_seconds, 1e-9),
                 "elapsed": state.elapsed}
        epoch_end = state.step % plan.steps_per_epoch == 0 or state.step == total_steps
        improved = False
        if val_rows and (epoch_end or (config.eval_every and state.step % config.eval_every == 0)):
            valid_loss, valid_accuracy, valid_extra = evaluate(objective_module, val_rows, collate, eval_objective,
                                                               config.batch_size, config, ctx)
            if not math.isfinite(valid_loss):
                raise diverged(checkpoints_dir, state.step,
                               f"validation loss became {valid_loss} after step {state.step}", ctx)
            event.update(valid_loss=valid_loss, valid_mean_token_accuracy=valid_accuracy,
                         **{f"valid_{name}": value for name, value in valid_extra.items()})
            improved = state.best_valid_loss is None or valid_loss < state.best_valid_loss
            if improved:
                state.best_valid_loss, state.best_step, state.evals_without_improvement = valid_loss, state.step, 0
            else:
                state.evals_without_improvement += 1
                state.stopped_early = bool(config.patience) and state.evals_without_improvement >= config.patience
        events.write(event)
        progress.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{event['tokens_per_second']:.0f}", refresh=False)
        progress.update(1)
        if (epoch_end or improved or state.stopped_early
                or (config.save_every and state.step % config.save_every == 0)):
            if not all_finite(trainable, optimizer):
                raise diverged(checkpoints_dir, state.step,
                               f"weights or optimizer state became NaN/inf at step {state.step}", ctx)
            save_checkpoint(checkpoints_dir, model, optimizer, scheduler, state, training_fields,
                            config.keep_last, ctx)
    progress.close()
    events.close()
    return TrainResult(state=state, total_steps=total_steps, metrics=final_metrics(run_dir, state))


def all_finite(parameters: list[torch.Tensor], optimizer) -> bool:
    """Whether the trainable weights and every floating tensor of the optimizer state are finite."""
    tensors = list(parameters) + [v for per_param in optimizer.state.values() for v in per_param.values()
                                  if torch.is_tensor(v) and v.is_floating_point()]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def diverged(checkpoints_dir: Path, bad_step: int, what: str, ctx: Dist) -> TrainingDivergedError:
    """The error for a run whose weights after ``bad_step`` steps are unusable, after moving their
    checkpoint out of resume's way; it names the newest checkpoint known good."""
    aside, good = None, None
    if ctx.is_main:
        aside = checkpoints_dir / f"{DIVERGED_PREFIX}{PREFIX}{bad_step:07d}"
        good = set_aside_diverged(checkpoints_dir, bad_step)
        aside = aside if aside.exists() else None
    aside, good = broadcast_object((aside, good), ctx)
    kept = f"the last good checkpoint is {good}" if good else "no good checkpoint was saved"
    moved = f"; the checkpoint of these weights was moved to {aside.name}" if aside else ""
    return TrainingDivergedError(f"{what}; training stopped ({kept}{moved})")


def final_metrics(run_dir: Path, state: LoopState) -> dict:
    """The latest value of every logged metric (from events.jsonl, so a run resumed after its
    last step reports the same), plus the best validation loss and whether it stopped early."""
    metrics: dict = {}
    for event in read_events(run_dir / EVENTS_FILE):
        metrics.update({k: v for k, v in event.items() if k not in ("total_steps", "epoch")})
    if state.best_step is not None:
        metrics.update(best_valid_loss=state.best_valid_loss, best_step=state.best_step)
    metrics.update(steps=state.step, stopped_early=state.stopped_early)
    return metrics


def _progress_bar(config: TrainingConfig, ctx: Dist, initial: int, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="training", unit="step", dynamic_ncols=True,
                disable=not (config.progress and ctx.is_main))
