"""`merge_search`: a merge whose parameters are searched (`workbench merge-search`). The step is
the `merge` kind's mergekit config, with step ids wherever it names a model (resolved by the
merge kind, which this one extends), plus a `search:` block whose objective data files are
relative to the recipe and whose kl `reference` may be a step id. Finished trials are cached
beside the step's output (`runs/<name>/<step-id>.trials/`), so a re-run of a changed search
measures only trials it has not seen."""

from __future__ import annotations

import typing
from pathlib import Path

from workbench.recipe.kinds.base import StepCall, as_strings
from workbench.recipe.kinds.merge import Merge
from workbench.recipe.refs import replace_inputs


class MergeSearch(Merge):
    name = "merge_search"
    required = ("merge_method", "search")

    def parameters(self) -> dict[str, object]:
        return {**super().parameters(), "search": typing.Any}

    def resolve(self, step, inputs, problems) -> None:
        super().resolve(step, inputs, problems)
        search = step.params.get("search")
        objective = search.get("objective") if isinstance(search, dict) else None
        if not isinstance(objective, list):
            return  # the engine's validation says what is missing
        terms = []
        for i, term in enumerate(objective):
            key = f"search.objective[{i}]"
            term = {"data": term} if isinstance(term, str) else term
            if isinstance(term, dict):
                term = dict(term)
                if isinstance(term.get("data"), str):
                    term["data"] = inputs.data_files(step, term["data"], f"{key}.data")
                if isinstance(term.get("reference"), str):
                    term["reference"] = inputs.checkpoint(step, term["reference"], f"{key}.reference", many=False)
            terms.append(term)
        step.params["search"] = {**search, "objective": terms}

    def validate(self, step, stand_in: str) -> None:
        """The search's own validation (parameters, ranges, objective, sampler). Data files are
        the real ones; each distinct checkpoint input stands in as its own empty directory
        (one shared stand-in would make every model look like the base model)."""
        import tempfile

        from workbench.merge_search import load_search

        with tempfile.TemporaryDirectory(prefix="merge-search-validate-") as scratch:
            dirs: dict[str, str] = {}

            def stand_in_for(value):
                if isinstance(value, Path) and value.is_file():
                    return str(value)
                if repr(value) not in dirs:
                    dirs[repr(value)] = str(Path(scratch) / str(len(dirs)))
                    Path(dirs[repr(value)]).mkdir()
                return dirs[repr(value)]

            load_search(replace_inputs(step.params, stand_in_for), self.name)

    def run(self, call: StepCall) -> Path:
        from workbench import merge_search

        return merge_search.run(as_strings(call.params), call.out, overwrite=True, progress=True).checkpoint.path

    def metrics(self, output: Path) -> dict:
        from workbench.checkpoint import Checkpoint

        search = ((Checkpoint(output).lineage or {}).get("parameters") or {}).get("search") or {}
        return {"best objective": search["objective"]} if "objective" in search else {}

    def report_blocks(self, step_id: str, output: Path) -> list[tuple]:
        from workbench.checkpoint import Checkpoint
        from workbench.merge_search import PLOT_FILE

        search = (Checkpoint(output).lineage or {})["parameters"]["search"]
        rows = [[name, f"{value:.4g}"] for name, value in search["parameters"].items()]
        rows += [[name, f"{value:.4f}"] for name, value in search["terms"].items()]
        rows.append(["objective", f"{search['objective']:.4f}"])
        return [("h2", f"Merge search: {step_id}"),
                ("text", f"Best of {search['trials']} trials: trial {search['trial']} (sampler {search['sampler']}, "
                         f"seed {search['seed']}); every trial in trials.csv, objective.png and search.md "
                         "in the step's output."),
                ("table", ["parameter", "value"], rows), ("image", f"{output.name}/{PLOT_FILE}")]
