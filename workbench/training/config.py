"""Settings shared by every engine that trains (sft, distill), each option defined once.

An engine's config composes these parts (as litgpt's ``TrainArgs``/``EvalArgs``) instead of
copying their fields: ``DataConfig`` (which data, how it is split and cut) and
``TrainingConfig`` (the training loop's hyperparameters). Each field carries its help text
(``option``); ``workbench.training.fields`` sees a composed config flat, so the CLI options
and recipe keys stay flat names (``--lr``, ``lr:``) however the parts are arranged.

As in transformers and ``workbench data check``, ``batch_size`` is the rows (examples, or
packed rows) of one forward pass on one process: an optimizer step sees batch_size x
grad_accum x processes rows, and the loss is the mean over all their supervised tokens,
however they are split.
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.errors import ConfigError
from workbench.training.fields import flat_values, option

SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "bf16", "fp32")
TRUNCATION_MODES = ("truncate", "drop")  # as workbench.data.prepare (which loads torch)


@dataclass(slots=True)
class DataConfig:
    """The training data and how a validation set is made from it."""

    data: str = option("", "Training data: chat JSONL ({'messages': [...]}) or prompt/completion JSONL.")
    val_data: str | None = option(None, "Validation JSONL (default: hold out --val-split of --data).")
    val_split: float = option(0.1, "Share of --data held out for validation when no --val-data.")
    truncation: str = option("truncate", "Examples longer than --max-length: truncate | drop.")

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid key (``data`` itself is checked by the
        engine, among its other required inputs)."""
        if not 0 <= self.val_split < 1:
            raise ConfigError(f"val_split must be in [0, 1), got {self.val_split!r}")
        if self.truncation not in TRUNCATION_MODES:
            raise ConfigError(f"truncation must be one of {', '.join(TRUNCATION_MODES)}, got {self.truncation!r}")


@dataclass(slots=True)
class TrainingConfig:
    """The training loop's hyperparameters, and how a run is started and shown."""

    epochs: int = option(3, "Passes over the training data.")
    batch_size: int = option(8, "Examples (or packed rows) per forward pass and process.")
    grad_accum: int = option(1, "Forward passes per optimizer step (step = batch x accum x processes).")
    lr: float = option(2e-5, "Peak learning rate.")
    warmup_ratio: float = option(0.0, "Warmup as a share of all steps.")
    warmup_steps: int = option(0, "Warmup steps (wins over --warmup-ratio).")
    schedule: str = option("cosine", "Learning-rate decay after warmup: cosine | linear | constant.")
    weight_decay: float = option(0.0, "AdamW weight decay (not on biases and norms).")
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0: off).")
    max_length: int = option(1024, "Tokens per example (and per packed row).")
    seed: int = option(0, "Seed for shuffling, the validation split, LoRA init and dropout.")
    precision: str = option("auto", "auto (bf16 on a GPU that has it) | bf16 (autocast) | fp32.")
    packing: bool = option(False, "Pack several examples per row (attention stays within each example).")
    fsdp: bool = option(False, "Shard model, gradients and optimizer state over torchrun's processes (FSDP2) "
                               "instead of replicating them (docs/distributed.md).")
    eval_every: int = option(0, "Also validate every N steps (0: only at epoch ends).")
    save_every: int = option(0, "Also checkpoint every N steps (0: only at epoch ends and new best).")
    keep_last: int = option(3, "Training checkpoints kept (the best is kept too).")
    patience: int = option(0, "Stop after N validations without improvement (0: never).")
    max_steps: int = option(0, "Stop after N steps (0: run all epochs).")
    resume: bool = option(False, "Continue the run in --out even if its settings differ.")
    overwrite: bool = option(False, "Delete --out and start over.")
    progress: bool = option(True, "Show a progress bar.")

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid key."""
        positive = ("epochs", "batch_size", "grad_accum", "max_length", "keep_last")
        for key in positive:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        non_negative = ("warmup_steps", "eval_every", "save_every", "patience", "max_steps", "seed")
        for key in non_negative:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{key} must be an integer >= 0, got {value!r}")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not self.max_grad_norm >= 0:
            raise ConfigError(f"max_grad_norm must be >= 0 (0 disables clipping), got {self.max_grad_norm!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.fsdp and not isinstance(self.fsdp, bool):
            raise ConfigError(f"fsdp must be true or false, got {self.fsdp!r}")
        if self.resume and self.overwrite:
            raise ConfigError("resume and overwrite exclude each other: pick one")


def run_identity(config, volatile: tuple[str, ...]) -> dict:
    """The settings that define a run, flat, less the ``volatile`` ones: a directory holding
    another identity is another run. The loop's hyperparameters come first, as in the run.json
    files written when the engines' configs inherited them; ``fsdp`` only when on, so runs from
    before --fsdp existed keep their identity."""
    values = flat_values(config)
    ordered = {**flat_values(config.train), **values}
    if not ordered["fsdp"]:
        volatile = (*volatile, "fsdp")
    return {key: value for key, value in ordered.items() if key not in volatile}
