"""The training loop shared by every engine that trains (sft, distill): config, objective
contract, loop, checkpoints and resume, metrics, data parallelism.

Names are imported lazily so that reading a config (e.g. for `--help`) does not load torch.
"""

from importlib import import_module

_EXPORTS = {
    "TrainingConfig": "workbench.training.config",
    "config_from_dict": "workbench.training.config",
    "Dist": "workbench.training.distributed",
    "setup_distributed": "workbench.training.distributed",
    "TrainResult": "workbench.training.loop",
    "TrainingDivergedError": "workbench.training.loop",
    "train": "workbench.training.loop",
    "causal_lm_objective": "workbench.training.objectives",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'workbench.training' has no attribute '{name}'")
    attribute = "setup" if name == "setup_distributed" else name
    return getattr(import_module(_EXPORTS[name]), attribute)
