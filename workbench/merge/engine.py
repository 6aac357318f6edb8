"""``merge.run``: a mergekit config in, a merged checkpoint out, through the native streaming
backend (``native.py``) when it supports the method and config, else through mergekit
(``mergekit_backend.py``); ``merge.tensors``: the same native merge in memory."""

from __future__ import annotations

import os
from pathlib import Path

from workbench import atomic
from workbench.checkpoint import Checkpoint, pickle_files, pickle_refusal
from workbench.errors import CheckpointError, ConfigError
from workbench.merge.compatibility import check_compatible, vocab_sizes_differ
from workbench.merge.config import NATIVE_METHODS, MergeConfig, ModelEntry, load_config
from workbench.merge.output import Attachments

BACKENDS = ("auto", "native", "mergekit")
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def run(config: dict | str | os.PathLike, out_dir: str | os.PathLike, *, backend: str = "auto",
        overwrite: bool = False, progress: bool = False, attachments: Attachments | None = None) -> Checkpoint:
    """Merge the models a mergekit config names into a checkpoint at ``out_dir``.

    backend: 'auto' (native when it supports the method and config, else mergekit),
    'native' (error when it cannot), 'mergekit'. All input problems are reported before
    any tensor is read, and nothing is written then. ``attachments``: lineage and files a
    composing caller adds to the checkpoint.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend '{backend}' (expected one of {', '.join(BACKENDS)})")
    merge_config = load_config(config)
    refuse_pickle_inputs(merge_config)
    out_dir = Path(out_dir)
    atomic.recover(out_dir)
    if out_dir.exists() and not overwrite:
        raise CheckpointError(f"{out_dir}: already exists (pass --overwrite to replace it)")
    atomic.check_replaceable(out_dir)
    blockers = merge_config.native_blockers()
    if backend == "native" and blockers:
        raise ConfigError(f"--backend native cannot run this config: {blockers[0]}")
    if backend == "auto" and not blockers and merge_config.tokenizer_source is not None \
            and vocab_sizes_differ(merge_config):
        blockers = ["different vocabularies need mergekit's tokenizer alignment"]
    if backend == "mergekit" or blockers:
        from workbench.merge.mergekit_backend import check_parameters, run_mergekit

        check_parameters(merge_config)
        if merge_config.models and merge_config.tokenizer_source is None:
            entries = merge_config.inputs()
            check_compatible(entries, [Checkpoint(e.ref.path) for e in entries])
        return run_mergekit(merge_config, out_dir, overwrite=overwrite, progress=progress,
                            lineage_inputs=_lineage_inputs(merge_config), attachments=attachments)
    return _run_native(merge_config, out_dir, overwrite=overwrite, progress=progress, attachments=attachments)


def tensors(config: dict | str | os.PathLike | MergeConfig, progress: bool = False):
    """The tensors ``run(config, out, backend="native")`` would write, as (name, tensor)
    pairs in memory, nothing written. For callers that merge many times (a search): no
    disk round trip. Native methods and plain checkpoint inputs only (a LoRA input would be
    merged into its base on every call). Each tensor may be a view onto a memory-mapped
    input: copy it before asking for the next."""
    from workbench.merge.native import merged_tensors, open_inputs

    merge_config = config if isinstance(config, MergeConfig) else load_config(config)
    blockers = merge_config.native_blockers()
    if blockers:
        raise ConfigError(f"{merge_config.source}: an in-memory merge needs the native engine "
                          f"({', '.join(NATIVE_METHODS)}): {blockers[0]}")
    lora = next((e.ref for e in merge_config.inputs() if e.ref.lora is not None), None)
    if lora is not None:
        raise ConfigError(f"{merge_config.source}: '{lora}' is a LoRA input; an in-memory merge takes "
                          "plain checkpoints (merge the adapter into its base first)")
    plan = open_inputs(merge_config, lambda entry: Checkpoint(entry.ref.path))
    return merged_tensors(plan, progress)


def _run_native(config: MergeConfig, out_dir: Path, *, overwrite: bool, progress: bool,
                attachments: Attachments | None) -> Checkpoint:
    from workbench.merge.native import open_inputs, run_native

    # Header-only checks first, against a LoRA's base: adapters are merged only after.
    plan = open_inputs(config, lambda entry: Checkpoint(entry.ref.path))
    lineage_inputs = _lineage_inputs(config)  # fingerprints may hash inputs: only once they are valid
    if all(entry.ref.lora is None for entry in plan.entries):
        return run_native(plan, out_dir, overwrite=overwrite, progress=progress, lineage_inputs=lineage_inputs,
                          attachments=attachments)
    from workbench.merge.lora import merge_adapter

    with atomic.scratch_dir(out_dir) as tmp:
        merged: dict = {}

        def checkpoint_of(entry: ModelEntry) -> Checkpoint:
            if entry.ref.lora is None:
                return Checkpoint(entry.ref.path)
            if entry.ref not in merged:
                merged[entry.ref] = merge_adapter(entry.ref, Path(tmp) / f"model{len(merged)}")
            return merged[entry.ref]

        plan = open_inputs(config, checkpoint_of)
        return run_native(plan, out_dir, overwrite=overwrite, progress=progress, lineage_inputs=lineage_inputs,
                          attachments=attachments)


def refuse_pickle_inputs(config: MergeConfig) -> None:
    """Every checkpoint and LoRA adapter the config names holds safetensors weights; checked
    before any library (mergekit, peft) could unpickle one. A checkpoint directory is read
    as ``Checkpoint`` does (safetensors first, pickle-only refused); an adapter likewise:
    peft would fall back to adapter_model.bin."""
    for _, ref in config.referenced():
        Checkpoint(ref.path)
        if ref.lora is not None and not (ref.lora / ADAPTER_WEIGHTS).is_file():
            pickles = pickle_files(ref.lora)
            if pickles:
                raise pickle_refusal(ref.lora, pickles,
                                     "PeftModel.from_pretrained(BASE_MODEL, DIR).save_pretrained(DIR)")
            raise CheckpointError(f"{ref.lora}: LoRA adapter without {ADAPTER_WEIGHTS}")


def _lineage_inputs(config: MergeConfig) -> dict:
    """Each input checkpoint (and LoRA adapter) by its role in the config."""
    inputs = {}
    for role, ref in config.referenced():
        if role == "tokenizer_source":
            continue
        inputs[role] = Checkpoint(ref.path)
        if ref.lora is not None:
            inputs[f"{role}.lora"] = _adapter_file(ref.lora)
    return inputs


def _adapter_file(lora_dir: Path) -> Path:
    return lora_dir / ADAPTER_WEIGHTS

