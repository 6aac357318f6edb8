"""The training loop shared by every engine that trains (sft, distill).

One module a purpose; import from them directly (this package re-exports nothing, so that
reading a config, e.g. for `--help`, does not load torch):

- ``config``: the loop's hyperparameters (``TrainingConfig``).
- ``loop``: ``train``, the one visible training loop; ``TrainingDivergedError``.
- ``objectives``: the objective contract and ``causal_lm_objective``.
- ``distributed``: ``setup`` (torchrun's process group) and ``Dist``.
- ``optim``, ``state``, ``rundir``, ``events``: optimizer and schedule, checkpoints and resume,
  the run directory, metrics.
"""
