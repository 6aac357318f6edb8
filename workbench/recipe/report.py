"""The run's report: runs/<name>/report.md and report.html (self-contained: plots inlined).

Sections: every step with its status, time and key metrics; what each step's kind adds
(an evaluation's comparison table and side-by-side answers); the loss curve of every step
that trains (from its events.jsonl); the lineage, which checkpoint came from which.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path

from workbench import __version__
from workbench.atomic import write_text
from workbench.markdown import cell, markdown_table
from workbench.recipe.runner import format_metrics, format_seconds
from workbench.recipe.schema import Recipe
from workbench.recipe.state import read_record
from workbench.training.events import EVENTS_FILE, plot_loss_curve


def write_report(recipe: Recipe, run_dir: Path) -> Path:
    """Write report.md, report.html and plots/*.png; returns the markdown path."""
    blocks = report_blocks(recipe, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "report.md", render_markdown(blocks))
    write_text(run_dir / "report.html", render_html(recipe.name, blocks, run_dir))
    return run_dir / "report.md"


def report_blocks(recipe: Recipe, run_dir: Path) -> list[tuple]:
    """The report as ("h1"|"h2"|"h3"|"text", str), ("table", header, rows), ("image", rel_path)."""
    records = {step_id: read_record(run_dir, step_id) for step_id in recipe.steps}
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    blocks = [("h1", f"Recipe {recipe.name}"),
              ("text", f"From {recipe.path} · workbench {__version__} · written {stamp}"),
              ("h2", "Steps")]
    rows = []
    for step in recipe.steps.values():
        record = records[step.id]
        status = record.status if record else "not run"
        if record and record.status == "failed":
            status = f"failed: {record.error}"
        metrics = format_metrics(record.metrics, limit=6).removeprefix(" | ") if record else ""
        rows.append([step.id, step.kind, status, format_seconds(record.seconds if record else None), metrics])
    blocks.append(("table", ["step", "kind", "status", "time", "key metrics"], rows))
    for step in recipe.steps.values():
        record = records[step.id]
        if record and record.status == "done":
            blocks += step.spec.report_blocks(step.id, run_dir / record.output)
    plots = [(step.id, _plot_loss(run_dir, step.id)) for step in recipe.steps.values() if step.spec.trains]
    plots = [(step_id, png) for step_id, png in plots if png]
    if plots:
        blocks.append(("h2", "Loss curves"))
        for step_id, png in plots:
            blocks += [("h3", step_id), ("image", png.relative_to(run_dir).as_posix())]
    blocks += [("h2", "Lineage"), ("table", ["step", "kind", "inputs", "output", "fingerprint"],
                                   _lineage_rows(recipe, records))]
    return blocks


def _lineage_rows(recipe: Recipe, records: dict) -> list[list[str]]:
    rows = []
    for step in recipe.steps.values():
        record = records[step.id]
        if record is None:
            continue
        inputs = "; ".join(f"{k}: {', '.join(v) if isinstance(v, list) else v}"
                           for k, v in record.inputs.items())
        rows.append([step.id, step.kind, inputs or "—", record.output or "—",
                     (record.output_fingerprint or "—")[:12]])
    return rows


def _plot_loss(run_dir: Path, step_id: str) -> Path | None:
    """plots/<step>-loss.png from the step's events.jsonl (train and validation loss)."""
    events_path = next(iter(sorted((run_dir / step_id).rglob(EVENTS_FILE))), None)
    if events_path is None:
        return None
    out = run_dir / "plots" / f"{step_id}-loss.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    return plot_loss_curve(events_path.parent, out, title=step_id)


def render_markdown(blocks: list[tuple]) -> str:
    parts = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            parts.append("#" * int(kind[1]) + " " + block[1])
        elif kind == "text":
            parts.append(cell(block[1]))
        elif kind == "table":
            parts.append(markdown_table(block[1], block[2]))
        elif kind == "image":
            parts.append(f"![loss curve]({block[1]})")
    return "\n\n".join(parts) + "\n"


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
         "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
         "text-align:left;vertical-align:top}th{background:#f3f3f3}")


def render_html(title: str, blocks: list[tuple], run_dir: Path) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "text":
            parts.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in block[1])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                           for row in block[2])
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        elif kind == "image":
            data = base64.b64encode((run_dir / block[1]).read_bytes()).decode()
            parts.append(f"<img alt='loss curve' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
