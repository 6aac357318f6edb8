"""Core: loading checkpoints into transformers models, padding and prompting them, generating.

Every engine and command goes through these names (never through its own copy): one loader
with the checks that turn a bad checkpoint into one line, one prompt renderer, one pad-id rule,
one set of stop tokens.
"""

from workbench.modeling.generation import (build_prompt_ids, generate_from_checkpoint, generate_text,
                                           sampling_kwargs)
from workbench.modeling.loading import (check_model_type, check_tensor_shapes, load_model, load_tokenizer,
                                        read_config)

__all__ = [
    "build_prompt_ids",
    "check_model_type",
    "check_tensor_shapes",
    "generate_from_checkpoint",
    "generate_text",
    "load_model",
    "load_tokenizer",
    "read_config",
    "sampling_kwargs",
]
