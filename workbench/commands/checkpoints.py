"""Commands on checkpoints themselves: import, inspect, generate."""

from __future__ import annotations

import json

import click


@click.group("import")
def import_group() -> None:
    """Turn a model from another format into a workbench checkpoint."""


@import_group.command("gguf")
@click.argument("gguf_file", type=click.Path(dir_okay=False, path_type=str))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32",
              show_default=True, help="dtype of the written weights (GGUF is dequantized first).")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists.")
def import_gguf_command(gguf_file: str, out_dir: str, dtype: str, overwrite: bool) -> None:
    """Dequantize GGUF_FILE through transformers and write a safetensors checkpoint to OUT_DIR.

    Config, weights, tokenizer, chat template and generation config are written; OUT_DIR
    appears only once complete.
    """
    from workbench.checkpoint import parse_dtype
    from workbench.model_import import import_gguf

    ckpt = import_gguf(gguf_file, out_dir, dtype=parse_dtype(dtype), overwrite=overwrite)
    click.echo(f"wrote {ckpt.path} ({ckpt.num_parameters:,} parameters, {ckpt.architecture})")


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def inspect(checkpoint: str, as_json: bool) -> None:
    """Show what CHECKPOINT holds: architecture, parameters, dtypes, layers, vocab, shards,
    tied embeddings, chat template and lineage. Reads headers only."""
    from workbench.checkpoint import Checkpoint
    from workbench.commands.inspection import describe, format_description

    description = describe(Checkpoint(checkpoint))
    click.echo(json.dumps(description, indent=2) if as_json else format_description(description))


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=str))
@click.option("--prompt", "-p", required=True, help="The user message.")
@click.option("--system", default=None, help="Optional system message.")
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True,
              help="0 is greedy; above 0 samples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for sampling.")
def generate(checkpoint: str, prompt: str, system: str | None, max_new_tokens: int,
             temperature: float, seed: int) -> None:
    """Answer PROMPT with CHECKPOINT (the chat template is applied when the tokenizer has one)."""
    from workbench.modeling import generate_from_checkpoint

    click.echo(generate_from_checkpoint(checkpoint, prompt, max_new_tokens=max_new_tokens,
                                        temperature=temperature, system=system, seed=seed))
