"""Evaluation of checkpoints on held-out chat data: loss, perplexity and token accuracy on the
assistant tokens, greedy-answer matching, agreement with a reference, one comparison table.

``run`` evaluates checkpoints from disk. The measuring functions below it are public too, for
callers that measure models they hold in memory (a merge search): ``token_metrics`` (loss),
``greedy_answers`` with ``prompt_of`` and ``match_rate`` (exact match), ``supervised_logprobs``
with ``mean_kl`` (KL to a reference). They are imported lazily so that reading ``EvalConfig``
(recipe validation) loads no torch.
"""

from workbench.evaluate.config import EvalConfig
from workbench.evaluate.table import REPORT_JSON, REPORT_MARKDOWN, comparison_rows

__all__ = ["EvalConfig", "REPORT_JSON", "REPORT_MARKDOWN", "comparison_rows", "run",
           "token_metrics", "greedy_answers", "prompt_of", "match_rate", "supervised_logprobs", "mean_kl"]

_LAZY = {
    "run": "workbench.evaluate.engine",
    "token_metrics": "workbench.evaluate.metrics",
    "match_rate": "workbench.evaluate.metrics",
    "supervised_logprobs": "workbench.evaluate.metrics",
    "mean_kl": "workbench.evaluate.metrics",
    "greedy_answers": "workbench.evaluate.answers",
    "prompt_of": "workbench.evaluate.answers",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'workbench.evaluate' has no attribute '{name}'")
