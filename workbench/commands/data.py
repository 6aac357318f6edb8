"""Commands on training data: `workbench data check`."""

from __future__ import annotations

import click


@click.group("data")
def data_group() -> None:
    """Inspect and validate chat JSONL training data."""


@data_group.command("check")
@click.argument("file", type=click.Path(path_type=str))
@click.option("--model", "model", default=None, type=click.Path(path_type=str),
              help="Checkpoint whose tokenizer and chat template render the data (adds token counts).")
@click.option("--max-length", type=int, default=1024, show_default=True, help="Tokens per example.")
@click.option("--truncation", type=click.Choice(["truncate", "drop"]), default="truncate",
              show_default=True, help="What to do with examples longer than --max-length.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--grad-accum", type=int, default=1, show_default=True, help="Gradient accumulation steps.")
@click.option("--packing", is_flag=True, help="Count steps with several examples packed per row.")
@click.option("--val-split", type=float, default=0.1, show_default=True,
              help="Share of unique examples held out for validation.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the validation split.")
def check(file: str, model: str | None, max_length: int, truncation: str, batch_size: int,
          grad_accum: int, packing: bool, val_split: float, seed: int) -> None:
    """Validate FILE (every problem listed with file:line) and show what training on it means:
    examples, duplicates, tokens, too-long examples, supervised tokens, steps per epoch."""
    import warnings

    from workbench.data.report import check_data

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lines = check_data(file, model, max_length=max_length, truncation=truncation,
                           batch_size=batch_size, grad_accum=grad_accum, packing=packing,
                           val_split=val_split, seed=seed)
    for warning in caught:
        click.echo(f"warning: {warning.message}", err=True)
    click.echo("\n".join(lines))
