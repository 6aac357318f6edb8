"""Every merge the native engine does not do, through mergekit's own Python API.

mergekit writes into a private temporary directory; its tensors are then streamed through
a ``CheckpointWriter`` so the result gets the same atomic commit, tokenizer/chat template
handling, model card and lineage as a native merge.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from workbench import atomic
from workbench.checkpoint import Checkpoint, CheckpointWriter
from workbench.errors import ConfigError
from workbench.merge.config import MergeConfig
from workbench.merge.output import Attachments, finish_checkpoint
from workbench.safetensors_io import PlannedTensor


def check_parameters(config: MergeConfig) -> None:
    """Unknown parameter keys, found before mergekit (which ignores them) starts."""
    from mergekit import merge_methods

    from workbench.errors import did_you_mean

    method = merge_methods.get(config.method)
    names = [p.name for p in method.spec.parameters]
    scopes = [("parameters", config.parameters)] + [
        (f"models[{i}].parameters", m.parameters) for i, m in enumerate(config.models)]
    for where, settings in scopes:
        for key in settings:
            if key not in names:
                raise ConfigError(f"{config.source}: {where}: unknown parameter '{key}' for {config.method}"
                                  f"{did_you_mean(str(key), names)} (known: {', '.join(names) or 'none'})")


def run_mergekit(config: MergeConfig, out_dir: Path, *, overwrite: bool, progress: bool,
                 lineage_inputs: dict, attachments: Attachments | None = None) -> Checkpoint:
    """mergekit's run_merge into a scratch directory, then committed like a native merge
    (callers check the config first: ``check_parameters`` and the header checks)."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    try:
        merge_config = MergeConfiguration.model_validate(config.raw)
    except Exception as exc:  # pydantic's ValidationError: a user error in the YAML
        first = str(exc).strip().splitlines()
        raise ConfigError(f"{config.source}: mergekit rejects the config: {' '.join(first[:3])}") from None
    with atomic.scratch_dir(out_dir) as scratch:
        options = MergeOptions(copy_tokenizer=True, lazy_unpickle=False, cuda=False, quiet=not progress,
                               write_model_card=False, lora_merge_cache=str(scratch / "lora"))
        run_merge(merge_config, str(scratch / "out"), options=options)
        produced = Checkpoint(scratch / "out")
        plan = [PlannedTensor(n, i.shape, i.torch_dtype) for n, i in produced.tensors.items()]
        with CheckpointWriter(out_dir, plan, overwrite=overwrite, config=produced.config) as writer:
            for name in sorted(produced.names()):
                writer.write(name, produced.read(name))
            for item in (scratch / "out").iterdir():
                if item.is_file() and not item.name.endswith(".safetensors") and item.name not in (
                        "model.safetensors.index.json", "README.md"):
                    shutil.copyfile(item, writer.staging_dir / item.name)
            return finish_checkpoint(writer, config, backend="mergekit", lineage_inputs=lineage_inputs,
                                     attachments=attachments)
