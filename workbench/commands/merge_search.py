"""`workbench merge-search`: tune a merge's parameters against validation data."""

from __future__ import annotations

import click


@click.command("merge-search")
@click.argument("search", type=click.Path(dir_okay=False, path_type=str))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--trials", type=int, default=None, help="How many trials (overrides search.trials).")
@click.option("--trials-dir", default=None, type=click.Path(file_okay=False, path_type=str),
              help="Cache of finished trials [default: OUT_DIR.trials beside OUT_DIR].")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR even if it is not an earlier search's output.")
def merge_search(search: str, out_dir: str, trials: int | None, trials_dir: str | None, overwrite: bool) -> None:
    """Search the merge parameters named in SEARCH (a mergekit config plus a `search:` block)
    and write the best trial's merge to OUT_DIR, with trials.csv, objective.png and search.md.

    Each trial merges in memory and is measured on the objective's validation files (mean loss,
    1 - exact match of greedy answers, or KL to a reference; lower is better). Finished trials
    are cached by fingerprint: a killed search resumes where it stopped, and a re-run with more
    trials measures only the new ones. See docs/merge_search.md.
    """
    from workbench.merge_search import run

    result = run(search, out_dir, trials=trials, trials_dir=trials_dir, overwrite=overwrite, progress=True)
    measured = sum(not r.cached for r in result.records)
    click.echo(f"best of {len(result.records)} trials ({measured} measured, {len(result.records) - measured} "
               f"cached) in {result.seconds:.1f} s: trial {result.best.number}, objective "
               f"{result.best.objective:.4f} -> {result.checkpoint.path}")
