"""Evaluation of checkpoints on held-out chat data: loss, perplexity and token accuracy on the
assistant tokens, greedy-answer matching, agreement with a reference, one comparison table."""

from workbench.evaluate.config import EvalConfig
from workbench.evaluate.run import run

__all__ = ["EvalConfig", "run"]
