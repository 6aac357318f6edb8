"""Core: loading checkpoints into transformers models, padding and prompting them, generating.

Every engine and command goes through these names (never through its own copy): one loader
with the checks that turn a bad checkpoint into one line, one prompt renderer, one pad-id rule,
one set of stop tokens.
"""

from workbench.modeling.generation import (build_prompt_ids, generate_from_checkpoint, generate_text,
                                           left_padded, pad_token_id, prompt_ids, sampling_kwargs, stop_token_ids)
from workbench.modeling.loading import (check_model_type, check_tensor_shapes, load_model, load_tokenizer,
                                        read_config)

__all__ = [
    "build_prompt_ids",
    "check_model_type",
    "check_tensor_shapes",
    "generate_from_checkpoint",
    "generate_text",
    "left_padded",
    "load_model",
    "load_tokenizer",
    "pad_token_id",
    "prompt_ids",
    "read_config",
    "sampling_kwargs",
    "stop_token_ids",
]
