"""`eval`: compare checkpoints on held-out chat data in one table. The baseline is the
recipe's model import upstream of the evaluated models unless `base` names one; each model
is labelled by its step id."""

from __future__ import annotations

import json
from pathlib import Path

from workbench.recipe.kinds.base import StepCall, StepKind, as_strings, dataclass_parameters, validate_config
from workbench.recipe.refs import Ref


class Eval(StepKind):
    name = "eval"
    checkpoint_keys = ("models", "reference", "base")
    required = ("models", "data")

    def parameters(self) -> dict[str, object]:
        from workbench.evaluate import EvalConfig

        return dataclass_parameters(EvalConfig)

    def validate(self, step, stand_in: str) -> None:
        from workbench.evaluate import EvalConfig

        validate_config(EvalConfig, step, stand_in)

    def prepare(self, step, recipe) -> dict:
        """Without a base, the first step upstream that brings a model in is the baseline."""
        if step.params.get("base") is not None:
            return step.params
        root = recipe.upstream_model_source(step.id)
        if root is None:
            return step.params
        models = step.params["models"]
        return {**step.params, "models": models if Ref(root) in models else [Ref(root), *models]}

    def run(self, call: StepCall) -> Path:
        from workbench.evaluate import EvalConfig, run

        labels = [value.step if isinstance(value, Ref) else Path(value).name for value in call.given["models"]]
        run(EvalConfig(**as_strings(call.params), labels=labels, out=str(call.out)))
        return call.out

    def output_fingerprint(self, output: Path) -> str:
        from workbench.checkpoint import file_fingerprint
        from workbench.evaluate import REPORT_JSON

        return file_fingerprint(output / REPORT_JSON)

    def metrics(self, output: Path) -> dict:
        return {}

    def report_blocks(self, step_id: str, output: Path) -> list[tuple]:
        from workbench.evaluate import REPORT_JSON, comparison_rows

        report = json.loads((output / REPORT_JSON).read_text())
        blocks = [("h2", f"Evaluation: {step_id}"), ("table", *comparison_rows(report))]
        if report["side_by_side"]:
            blocks.append(("h3", "Answers side by side"))
            for item in report["side_by_side"]:
                blocks.append(("text", f"{item['data']}: {item['prompt']} (expected: {item['expected']})"))
                blocks.append(("table", ["model", "answer"], [list(pair) for pair in item["answers"].items()]))
        return blocks

    def console_text(self, output: Path) -> str | None:
        from workbench.evaluate import REPORT_MARKDOWN

        table = output / REPORT_MARKDOWN
        return table.read_text() if table.is_file() else None
