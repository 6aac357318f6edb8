"""Weight merging: linear, slerp, ties and task_arithmetic natively (streaming, mergekit's
numerics, several times faster); every other mergekit method through mergekit itself.

    from workbench import merge
    merge.run("merge.yml", "out/merged")            # mergekit YAML, parsed or a path
    for name, tensor in merge.tensors(config): ...  # the same merge, in memory (native only)

Configs use mergekit's schema unchanged; see ``workbench.merge.config``.
"""

from __future__ import annotations

from workbench.merge.config import (
    INPUT,
    NATIVE_METHODS,
    NON_BASE,
    SHARED,
    TOKENIZER_SOURCE_WORDS,
    TOP_LEVEL_KEYS,
    MergeConfig,
    ModelEntry,
    ModelRef,
    load_config,
    validate_config,
)
from workbench.merge.engine import BACKENDS, run, tensors
from workbench.merge.output import Attachments, tokenizer_dir

__all__ = ["BACKENDS", "run", "tensors", "load_config", "validate_config", "tokenizer_dir", "Attachments",
           "MergeConfig", "ModelEntry", "ModelRef", "NATIVE_METHODS", "INPUT", "NON_BASE", "SHARED",
           "TOKENIZER_SOURCE_WORDS", "TOP_LEVEL_KEYS"]
