"""The training loop shared by every engine that trains (sft, distill): config, objective
contract, loop, checkpoints and resume, metrics, data parallelism."""

from workbench.training.config import TrainingConfig, config_from_dict
from workbench.training.distributed import Dist, setup as setup_distributed
from workbench.training.loop import TrainResult, TrainingDivergedError, train
from workbench.training.objectives import causal_lm_objective

__all__ = ["TrainingConfig", "config_from_dict", "Dist", "setup_distributed", "TrainResult",
           "TrainingDivergedError", "train", "causal_lm_objective"]
