"""What every merged checkpoint carries besides weights, whichever backend made it:
config.json, tokenizer + chat template + generation config from the tokenizer source,
a README.md model card, workbench.json lineage, and what a composing caller attaches."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from workbench.checkpoint import SUPPORT_FILES, Checkpoint, CheckpointWriter, make_lineage
from workbench.merge.config import MergeConfig, ModelRef


@dataclass
class Attachments:
    """What a caller that composes merges (a merge search) adds to the checkpoint it writes:
    lineage parameters and inputs beyond the merge's own, and files next to the weights,
    all committed atomically with them."""

    parameters: dict = field(default_factory=dict)  # added to the lineage parameters
    inputs: dict = field(default_factory=dict)  # role -> Checkpoint or data file, fingerprinted
    files: dict[str, str | bytes] = field(default_factory=dict)  # file name -> contents


def tokenizer_dir(config: MergeConfig) -> Path:
    """The tokenizer source: 'base', a model path, or (unset) the base model, else the first
    model, else the first slice's first source model (a slices-only passthrough config), as
    mergekit's copy_tokenizer does."""
    source = config.tokenizer_source
    if isinstance(source, ModelRef):
        return source.path
    if config.base_model is not None:
        return config.base_model.path
    return config.referenced()[0][1].path


def model_config(config_from: dict, dtype_name: str | None) -> dict:
    """The merged model's config.json: the source's, with the output dtype."""
    config = dict(config_from)
    if dtype_name:
        config["dtype"] = dtype_name
        if "torch_dtype" in config:
            config["torch_dtype"] = dtype_name
    return config


def finish_checkpoint(writer: CheckpointWriter, config: MergeConfig, *, backend: str, lineage_inputs: dict,
                      attachments: Attachments | None = None) -> Checkpoint:
    """Write support files, attachments and the model card (config.json is the backend's);
    commit."""
    attachments = attachments or Attachments()
    source = tokenizer_dir(config)
    for name in SUPPORT_FILES:
        if not (writer.staging_dir / name).exists() and (source / name).exists():
            (writer.staging_dir / name).write_bytes((source / name).read_bytes())
    for name, contents in attachments.files.items():
        if isinstance(contents, bytes):
            (writer.staging_dir / name).write_bytes(contents)
        else:
            (writer.staging_dir / name).write_text(contents)
    lineage = make_lineage("merge", {"method": config.method, "backend": backend, "config": config.raw,
                                     **attachments.parameters},
                           inputs={**lineage_inputs, **attachments.inputs})
    writer.write_text("README.md", model_card(writer.out_dir.name, config, backend, lineage))
    return writer.commit(lineage)


def model_card(title: str, config: MergeConfig, backend: str, lineage: dict) -> str:
    inputs = "\n".join(f"- `{role}`: `{item['path']}` (fingerprint `{item['fingerprint']}`)"
                       for role, item in lineage["inputs"].items())
    recipe = yaml.safe_dump(config.raw, sort_keys=False).rstrip()
    return (
        f"---\nlibrary_name: transformers\ntags:\n- merge\n- {config.method}\n---\n\n"
        f"# {title}\n\n"
        f"Merged with `workbench merge` using **{config.method}** ({backend} backend"
        f"{', mergekit numerics' if backend == 'native' else ''}).\n\n"
        f"## Inputs\n\n{inputs}\n\n"
        f"## Configuration\n\nMethod, models and parameters as given (mergekit YAML):\n\n"
        f"```yaml\n{recipe}\n```\n\n"
        f"Tokenizer, chat template and generation config come from `{tokenizer_dir(config)}`. "
        f"`workbench.json` records the inputs' fingerprints and package versions.\n"
    )
