"""The comparison table (markdown and JSON) and side-by-side answers of an evaluation."""

from __future__ import annotations

from pathlib import Path

from workbench import atomic
from workbench.markdown import cell, markdown_table

REPORT_JSON, REPORT_MARKDOWN = "eval.json", "eval.md"  # what an evaluation writes to its out dir
MATCH_TITLES = {"exact": "exact match", "contains": "answer contains", "regex": "regex match"}


def percent(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def comparison_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per model and data file, the baseline first."""
    baseline = {m["label"] for m in report["models"] if m["baseline"]}
    reference = next((m["label"] for m in report["models"] if m["path"] == report["reference"]), None)
    header = ["model", "data", "loss", "bits/byte", "ppl", "token acc", MATCH_TITLES[report["match"]]]
    if report["reference"]:
        header += [f"agrees with {reference or 'reference'}", "token agreement"]
    rows = []
    for row in report["results"]:
        name = row["model"] + (" (baseline)" if row["model"] in baseline else "")
        bpb = row.get("bits_per_byte")
        cells = [name, row["data"], f"{row['loss']:.3f}", "—" if bpb is None else f"{bpb:.3f}",
                 f"{row['perplexity']:.2f}",
                 percent(row["token_accuracy"]), percent(row["match"])]
        if report["reference"]:
            cells += [percent(row["agreement"]), percent(row["token_agreement"])]
        rows.append(cells)
    return header, rows


def comparison_table(report: dict) -> str:
    return markdown_table(*comparison_rows(report))


def side_by_side_markdown(report: dict) -> str:
    parts = []
    for item in report["side_by_side"]:
        parts.append(f"**{cell(item['data'])}** — prompt: {cell(item['prompt'])}  \n"
                     f"expected: {cell(item['expected'])}\n")
        parts.append(markdown_table(["model", "answer"], list(item["answers"].items())))
        parts.append("")
    return "\n".join(parts)


def report_markdown(report: dict) -> str:
    sections = ["## Evaluation", "", comparison_table(report), ""]
    if report["side_by_side"]:
        sections += ["### Answers side by side", "", side_by_side_markdown(report)]
    return "\n".join(sections)


def write_outputs(report: dict, out_dir: Path) -> None:
    """eval.json and eval.md in out_dir, each written whole or not at all."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out_dir / REPORT_JSON, report)
    atomic.write_text(out_dir / REPORT_MARKDOWN, report_markdown(report) + "\n")
