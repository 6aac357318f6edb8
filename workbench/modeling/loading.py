"""Loading checkpoints into transformers models, the one way every engine does it.

The directory is validated by ``Checkpoint`` first, then its config.json is checked for what
transformers needs (a ``model_type`` it knows, no request for the model's own Python code) and
every tensor's shape against the model that config describes, so a bad checkpoint fails with
our one-line error rather than a transformers traceback. After loading, a tensor transformers
did not use (unknown to the architecture), left to random initialization (absent from the
checkpoint) or could not fit is an error too: nothing is dropped or invented silently. Only
safetensors weights are read and ``trust_remote_code`` stays off.
"""

from __future__ import annotations

import os

import torch

from workbench.checkpoint import CONFIG_FILE, Checkpoint
from workbench.errors import CheckpointError


def _config_failures() -> tuple[type[Exception], ...]:
    """What transformers raises when config.json holds values it cannot build a model from
    (its configs validate fields through huggingface_hub's strict dataclasses)."""
    from huggingface_hub.errors import StrictDataclassError

    return ValueError, TypeError, KeyError, AttributeError, IndexError, ZeroDivisionError, StrictDataclassError


def load_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer

    read_config(Checkpoint(path))  # transformers reads it to pick the tokenizer class
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)


def load_model(path: str | os.PathLike, dtype: torch.dtype | None = None, device: str = "cpu"):
    """A causal LM from a checkpoint directory, in eval mode."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    ckpt = Checkpoint(path)
    check_tensor_shapes(ckpt)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, loading = AutoModelForCausalLM.from_pretrained(
            str(ckpt.path),
            dtype=dtype or "auto",
            use_safetensors=True,
            trust_remote_code=False,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # reported in `loading` and refused below, not raised
        )
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    _refuse_lost_tensors(ckpt, type(model).__name__, loading)
    model.to(device)
    model.eval()
    return model


def check_model_type(ckpt: Checkpoint) -> None:
    """config.json names a ``model_type`` this transformers has built in (its own code asked
    for through ``auto_map`` is never run)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    where = ckpt.path / CONFIG_FILE
    model_type = ckpt.config.get("model_type")
    remote = ckpt.config.get("auto_map")
    if model_type in CONFIG_MAPPING:
        return
    if remote:
        classes = ", ".join(sorted(remote)) if isinstance(remote, dict) else str(remote)
        raise CheckpointError(
            f"{where}: 'auto_map' asks for the model's own Python code ({classes}) and model_type "
            f"{model_type!r} is not built into transformers; the workbench does not run code shipped "
            "with a checkpoint (trust_remote_code stays off)")
    if model_type is None:
        raise CheckpointError(f"{where}: no 'model_type', so transformers cannot tell which architecture "
                              "this is (expected e.g. \"model_type\": \"llama\")")
    raise CheckpointError(f"{where}: model_type {model_type!r} is not an architecture this transformers "
                          "knows (a typo, or a newer transformers is needed)")


def read_config(ckpt: Checkpoint):
    """The checkpoint's config as transformers reads it, or a CheckpointError naming config.json."""
    from transformers import AutoConfig

    check_model_type(ckpt)
    try:
        return AutoConfig.from_pretrained(str(ckpt.path), trust_remote_code=False)
    except _config_failures() as exc:
        raise _cannot_build(ckpt, exc) from None


def check_tensor_shapes(ckpt: Checkpoint) -> None:
    """Every tensor the checkpoint and its config.json's model both name has the shape the
    config gives it. The model is built on the meta device: no memory, no weights read."""
    from transformers import AutoModelForCausalLM

    config = read_config(ckpt)
    try:
        with torch.device("meta"):
            expected = AutoModelForCausalLM.from_config(config).state_dict()
    except _config_failures() as exc:
        raise _cannot_build(ckpt, exc) from None
    for name, info in ckpt.tensors.items():
        if name in expected and tuple(expected[name].shape) != tuple(info.shape):
            raise CheckpointError(
                f"{info.file}: tensor '{name}' has shape {list(info.shape)}, but config.json makes it "
                f"{list(expected[name].shape)} (config and weights are from different models?)")


def _cannot_build(ckpt: Checkpoint, exc: Exception) -> CheckpointError:
    reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return CheckpointError(f"{ckpt.path / CONFIG_FILE}: transformers cannot build a causal LM from it ({reason})")


def _refuse_lost_tensors(ckpt: Checkpoint, model_class: str, loading: dict) -> None:
    """One line for the first tensor transformers dropped, left random or could not fit."""
    unexpected = sorted(loading.get("unexpected_keys") or ())
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{ckpt.path}: tensor '{unexpected[0]}'{more} is not part of {model_class}, "
                              "so it would be dropped; remove it or fix config.json's architecture")
    missing = sorted(loading.get("missing_keys") or ())
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{ckpt.path}: {model_class} needs tensor '{missing[0]}'{more}, which the "
                              "checkpoint lacks, so it would be left random")
    mismatched = sorted(loading.get("mismatched_keys") or ())
    if mismatched:
        name, got, wanted = mismatched[0]
        raise CheckpointError(f"{ckpt.path}: tensor '{name}' has shape {list(got)}, but {model_class} "
                              f"expects {list(wanted)}")
