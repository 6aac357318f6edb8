"""What a search leaves next to the best merge: trials.csv, objective.png and search.md.

Which parameters mattered is told two ways, both from the finished trials: optuna's
PED-ANOVA importance (how differently a parameter is distributed in the best trials than in
all of them; needs no extra library) and the Spearman rank correlation of each parameter with
the objective (its sign says which way to move it). With a few dozen trials both are rough.
"""

from __future__ import annotations

import csv
import io

import numpy as np

from workbench.merge_search.study import StudyResult


def trials_csv(result: StudyResult) -> str:
    """One row per trial: its number, every searched value, each term and the objective."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["trial", *result.labels, *result.term_labels, "objective", "seconds", "cached"])
    for r in result.records:
        writer.writerow([r.number, *(_g(r.values[k]) for k in result.labels),
                         *(_g(r.terms[k]) for k in result.term_labels), _g(r.objective),
                         f"{r.seconds:.2f}", int(r.cached)])
    return out.getvalue()


def _g(value: float) -> str:
    return repr(float(value))


def objective_plot(result: StudyResult, title: str) -> bytes:
    """PNG: each trial's objective and the best so far, against the trial number."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    numbers = [r.number for r in result.records]
    values = [r.objective for r in result.records]
    best = np.minimum.accumulate(values)
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.plot(numbers, values, "o", color="tab:blue", alpha=0.7, label="trial")
    ax.step(numbers, best, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("objective (lower is better)")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def importances(result: StudyResult) -> dict[str, float] | None:
    """PED-ANOVA importance per searched dimension (sums to 1), None with too few trials or
    when every trial scored the same."""
    import optuna

    objectives = [r.objective for r in result.records]
    if len(objectives) < 4 or max(objectives) == min(objectives):
        return None
    try:
        return optuna.importance.get_param_importances(
            result.study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (RuntimeError, ValueError):
        return None


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Rank correlation (average ranks for ties); None when either side is constant."""
    rx, ry = _ranks(xs), _ranks(ys)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(values: list[float]) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for value in np.unique(values):  # ties share their mean rank
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def report_markdown(result: StudyResult, *, source: str, sampler: str, seed: int, seconds: float) -> str:
    best = result.best
    measured = [r for r in result.records if not r.cached]
    lines = [
        f"# Merge search: {source}",
        "",
        f"{len(result.records)} trials ({len(measured)} measured in this run, "
        f"{len(result.records) - len(measured)} from the trial cache), sampler {sampler}, seed {seed}; "
        f"{seconds:.0f} s in this run, {sum(r.seconds for r in result.records):.0f} s of merging and measuring "
        f"in all. Best: trial {best.number}, objective {best.objective:.4f} (lower is better).",
        "",
        "## Best trial",
        "",
        "| parameter | value |",
        "|---|---|",
        *(f"| {k} | {v:.4g} |" for k, v in best.values.items()),
        *(f"| {k} | {v:.4f} |" for k, v in best.terms.items()),
        "",
        "## Which parameters mattered",
        "",
    ]
    ranked = importances(result)
    objectives = [r.objective for r in result.records]
    rows = []
    for label in result.labels:
        rho = spearman([r.values[label] for r in result.records], objectives)
        rows.append((label, ranked.get(label) if ranked else None, rho, best.values[label]))
    rows.sort(key=lambda row: -(row[1] or 0))
    lines += ["| parameter | importance (PED-ANOVA) | rank correlation with objective | best value |",
              "|---|---|---|---|"]
    for label, weight, rho, value in rows:
        lines.append(f"| {label} | {'—' if weight is None else f'{weight:.2f}'} | "
                     f"{'—' if rho is None else f'{rho:+.2f}'} | {value:.4g} |")
    lines += ["", "A positive correlation: the objective grew (got worse) as the parameter grew. "
                  "Importances need at least 4 trials with different objectives; with a few dozen "
                  "trials read both as hints, not measurements.", ""]
    return "\n".join(lines)
