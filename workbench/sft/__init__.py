"""Supervised fine-tuning (full or LoRA) on chat JSONL with the shared training loop.

``run`` is imported lazily so that reading ``SFTConfig`` (e.g. for `--help`) does not load torch.
"""

from workbench.sft.config import ADAPTER_DIR, SFTConfig

__all__ = ["ADAPTER_DIR", "SFTConfig", "run"]


def __getattr__(name: str):
    if name == "run":
        from workbench.sft.engine import run

        return run
    raise AttributeError(f"module 'workbench.sft' has no attribute '{name}'")
