"""`workbench eval`: compare checkpoints on held-out chat data."""

from __future__ import annotations

import json

import click


@click.command("eval")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--data", "data", multiple=True, required=True, type=click.Path(path_type=str),
              help="Held-out chat JSONL (repeat for several tasks).")
@click.option("--reference", default=None, help="Checkpoint whose greedy answers the others are compared with.")
@click.option("--base", default=None, help="Baseline checkpoint (default: the root of the first one's lineage).")
@click.option("--match", type=click.Choice(["exact", "contains", "regex"]), default="exact", show_default=True,
              help="How a greedy answer is compared with the expected one (case and outer whitespace ignored).")
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--max-length", type=int, default=1024, show_default=True, help="Tokens per example for the loss.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--limit", type=int, default=0, help="Only the first N examples of each file (0: all).")
@click.option("--side-by-side", type=int, default=3, show_default=True,
              help="Prompts shown with every model's answer.")
@click.option("--out", default=None, type=click.Path(file_okay=False, path_type=str),
              help="Write eval.json and eval.md here.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
def evaluate(checkpoints, data, reference, base, match, max_new_tokens, max_length, batch_size, limit,
             side_by_side, out, as_json) -> None:
    """Evaluate CHECKPOINTS on held-out chat data: loss, perplexity and token accuracy on the
    assistant tokens, match of greedy answers, agreement with --reference (whole greedy answers,
    and top-1 next tokens on the reference answers). Prints one comparison table with the base
    model as baseline, then answers side by side."""
    from workbench.evaluate import EvalConfig, run
    from workbench.evaluate.table import report_markdown

    config = EvalConfig(models=list(checkpoints), data=list(data), reference=reference, base=base,
                        match=match, max_new_tokens=max_new_tokens, max_length=max_length,
                        batch_size=batch_size, limit=limit, side_by_side=side_by_side, out=out)
    report = run(config, log=lambda line: click.echo(line, err=True))
    click.echo(json.dumps(report, indent=2) if as_json else report_markdown(report))
