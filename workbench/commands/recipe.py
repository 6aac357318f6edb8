"""`workbench run RECIPE.yaml`: run a recipe, reusing every step already done."""

from __future__ import annotations

import click


@click.command("run")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=str))
@click.option("--dry-run", is_flag=True, help="Print the plan (each step: run or cached, and why); run nothing.")
@click.option("--set", "overrides", multiple=True, metavar="STEP.KEY=VALUE",
              help="Override a step parameter (VALUE is YAML). Repeatable.")
@click.option("--only", multiple=True, metavar="STEP", help="Run only this step (its inputs must be done).")
@click.option("--from", "start", multiple=True, metavar="STEP", help="Re-run this step and all that depend on it.")
@click.option("--force", multiple=True, metavar="STEP", help="Re-run this step even when cached.")
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Outputs go to RUNS_DIR/<recipe name>/<step id>/.")
def run_recipe(recipe, dry_run, overrides, only, start, force, runs_dir) -> None:
    """Run RECIPE: its steps in dependency order, each skipped when its finished output has
    the same fingerprint (parameters, input checkpoints, data files, version). Writes
    RUNS_DIR/<name>/report.md and report.html, and prints what each step shows at the end
    (an evaluation's table)."""
    from workbench.recipe import load_recipe
    from workbench.recipe.runner import Runner, Selection

    loaded = load_recipe(recipe, list(overrides))
    runner = Runner(loaded, runs_dir, Selection(tuple(only), tuple(start), tuple(force)))
    if dry_run:
        for decision in runner.plan():
            click.echo(f"{decision.action:7} {decision.step.id} ({decision.step.kind}): {decision.reason}")
        return
    from workbench.recipe.report import write_report

    try:
        runner.run()
    finally:
        report = write_report(loaded, runner.run_dir)
        click.echo(f"report: {report} (and report.html)", err=True)
    for step in loaded.steps.values():
        text = step.spec.console_text(runner.run_dir / step.id)
        if text is not None:
            click.echo(text)
