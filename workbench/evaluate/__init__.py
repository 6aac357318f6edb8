"""Evaluation of checkpoints on held-out chat data: loss, perplexity and token accuracy on the
assistant tokens, greedy-answer matching, agreement with a reference, one comparison table.

``run`` is imported lazily so that reading ``EvalConfig`` (recipe validation) loads no torch.
"""

from workbench.evaluate.config import EvalConfig
from workbench.evaluate.table import REPORT_JSON, REPORT_MARKDOWN, cell, comparison_rows, markdown_table

__all__ = ["EvalConfig", "REPORT_JSON", "REPORT_MARKDOWN", "cell", "comparison_rows", "markdown_table", "run"]


def __getattr__(name: str):
    if name == "run":
        from workbench.evaluate.engine import run

        return run
    raise AttributeError(f"module 'workbench.evaluate' has no attribute '{name}'")
