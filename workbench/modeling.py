"""Loading checkpoints into transformers models, the one way every engine does it.

The directory is validated by ``Checkpoint`` first, so a bad path fails with our one-line
error rather than a transformers traceback. Only safetensors weights are read and
``trust_remote_code`` stays off.
"""

from __future__ import annotations

import os

import torch

from workbench.checkpoint import Checkpoint


def load_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)


def load_model(path: str | os.PathLike, dtype: torch.dtype | None = None, device: str = "cpu"):
    """A causal LM from a checkpoint directory, in eval mode."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    ckpt = Checkpoint(path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(ckpt.path),
            dtype=dtype or "auto",
            use_safetensors=True,
            trust_remote_code=False,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    model.to(device)
    model.eval()
    return model
