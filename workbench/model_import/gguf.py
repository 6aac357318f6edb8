"""Turn a GGUF file into a safetensors checkpoint through transformers' GGUF loader.

transformers dequantizes every tensor (Q4_1, Q8_0, ...) to float and rebuilds the
tokenizer and its chat template from the GGUF metadata; we write the result with the
workbench's atomic writer and record the GGUF file's hash as the input.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from workbench import atomic
from workbench.checkpoint import Checkpoint, make_lineage, save_model
from workbench.errors import CheckpointError

GGUF_MAGIC = b"GGUF"


def check_gguf(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: file does not exist")
    if not path.is_file():
        raise CheckpointError(f"{path}: is a directory, expected a .gguf file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise CheckpointError(f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")


def load_gguf(path: str | os.PathLike):
    """(model, tokenizer) dequantized from a GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = Path(path).resolve()
    check_gguf(path)
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=torch.float32)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: transformers cannot load this GGUF ({exc})") from exc
    finally:
        hf_logging.set_verbosity_warning()
    model.eval()
    return model, tokenizer


def import_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                dtype: torch.dtype | None = None, overwrite: bool = False) -> Checkpoint:
    gguf_path = Path(gguf_path)
    check_gguf(gguf_path)
    atomic.recover(out_dir)
    if Path(out_dir).exists() and not overwrite:
        raise CheckpointError(f"{out_dir}: already exists (pass --overwrite to replace it)")
    atomic.check_replaceable(out_dir)
    model, tokenizer = load_gguf(gguf_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # The weights are dequantized now: the config must not send loaders back to the GGUF.
    for key in ("quantization_config", "_model_name_or_path"):
        if hasattr(model.config, key):
            delattr(model.config, key)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    lineage = make_lineage(
        "import-gguf",
        {"dtype": str(dtype or torch.float32).removeprefix("torch.")},
        {"gguf": gguf_path},
    )
    return save_model(model, out_dir, lineage=lineage, tokenizer=tokenizer, dtype=dtype,
                      overwrite=overwrite)
