"""The shape of a step kind: what the schema, runner, fingerprint and report ask of it.

A kind is one module under ``workbench/recipe/kinds/`` with one ``StepKind`` subclass, and
one line in the registry (``kinds/__init__.py``). The generic code never branches on a
kind's name; it asks the kind:

- ``parameters()``: the keys a step may set, each with its type (pydantic coerces them);
  ``required``: those it must set.
- ``checkpoint_keys``: the parameters that name input checkpoints (a step id or a directory);
  ``data_keys()``: the ones that name data files (hashed into the fingerprint).
- ``check`` / ``resolve`` / ``validate``: the kind's own rules, its own input names, and its
  engine's own validation, all before any step runs.
- ``published(params)``: named places inside its output other steps may use (an adapter).
- ``prepare(step, recipe)``: parameters the runner adds (an evaluation's baseline).
- ``run(call)``: one call to the engine's public function.
- ``fingerprint_part``, ``output_fingerprint``, ``metrics``: what the cache and the report
  cover; ``report_blocks`` and ``console_text``: what the report and the terminal show.
- ``trains``: whether it writes a loss curve (events.jsonl) and training checkpoints a killed
  run resumes from; ``brings_model``: whether it brings a model into the recipe.
- ``launch_options``: step-level keys (beside ``id`` and ``matrix``) the kind accepts, each
  with its type, never parameters too; they reach ``run`` as ``call.launch``.
  ``processes(call)``: a ``Processes`` when those options ask for several processes, which the
  runner then launches under torchrun instead of calling ``run`` (``Runner._invoke``; see
  ``kinds/torchrun.py``).

Engines are imported lazily, inside the methods: validating a recipe of merges does not
import the training stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from workbench.recipe.problems import Problems
from workbench.recipe.refs import replace_inputs

# Set by the runner, never by the recipe: where the output goes and whether to resume.
RUNNER_OWNED = ("out", "out_dir", "overwrite", "resume", "labels")
KEY_METRIC_WORDS = ("loss", "accuracy", "agreement", "perplexity")


@dataclass
class StepCall:
    """One run of a step: its parameters with inputs as paths (strings, as the engines'
    configs expect), the same as the recipe gave them (Ref for another step's output), where
    the output goes, whether to resume an interrupted run, and its launch options."""

    params: dict
    given: dict
    out: Path
    resume: bool = False
    launch: dict = field(default_factory=dict)


@dataclass
class Processes:
    """A call run as ``nproc`` torchrun processes of ``workbench ARGS --config FILE``, with
    ``config`` (the engine config's values) written to FILE."""

    nproc: int
    args: list[str]
    config: dict


class StepKind:
    name: str = ""
    checkpoint_keys: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    trains: bool = False
    brings_model: bool = False
    publishes: dict[str, str] = {}  # name of a place inside the output -> when the step writes it
    launch_options: dict[str, object] = {}
    free_form: bool = False  # parameters checked by the engine's own validation, not by type

    def parameters(self) -> dict[str, object]:
        """key -> type annotation (typing.Any when free-form)."""
        raise NotImplementedError

    def data_keys(self) -> tuple[str, ...]:
        """Parameters naming data files, hashed into the step's fingerprint."""
        return tuple(k for k in self.parameters() if k == "data" or k.endswith("_data"))

    # --- before anything runs ----------------------------------------------------------------

    def check(self, step, problems: Problems) -> None:
        """Rules between the kind's parameters, after they were coerced to their types."""

    def resolve(self, step, inputs, problems: Problems) -> None:
        """Input names become Ref (another step's output) or absolute Paths that exist."""
        for key in self.checkpoint_keys:
            value = step.params.get(key)
            if isinstance(value, list):
                resolved = []
                for item in value:
                    got = inputs.checkpoint(step, item, key, many=True)
                    resolved.extend(got if isinstance(got, list) else [got])
                step.params[key] = resolved
            elif value is not None:
                step.params[key] = inputs.checkpoint(step, value, key, many=False)
        for key in self.data_keys():
            if step.params.get(key) is not None:
                step.params[key] = inputs.data_files(step, step.params[key], key)

    def validate(self, step, stand_in: str) -> None:
        """The engine's own validation (ranges, choices), with every input replaced by
        ``stand_in``, an existing directory; raises a WorkbenchError. Runs only for a step
        with no other problem."""

    def published(self, params: dict) -> dict[str, str]:
        """name -> path inside the output, for what this step's output holds (see publishes)."""
        return {}

    # --- running -------------------------------------------------------------------------

    def prepare(self, step, recipe) -> dict:
        """The parameters the step runs with: its own, plus what the runner adds."""
        return step.params

    def run(self, call: StepCall) -> Path:
        """Run the engine; returns the path of what the step produced."""
        raise NotImplementedError

    def processes(self, call: StepCall) -> Processes | None:
        """How to run ``call`` as several processes, when its launch options ask for that;
        None: ``run`` runs it in this process."""
        return None

    # --- fingerprints, metrics, report --------------------------------------------------

    def fingerprint_part(self, key: str, value, canonical, hashes):
        """What of parameter ``key`` goes into the fingerprint; ``canonical`` replaces inputs
        by their content fingerprints."""
        return canonical(value)

    def output_fingerprint(self, output: Path) -> str:
        from workbench.checkpoint import Checkpoint

        return Checkpoint(output).fingerprint()

    def metrics(self, output: Path) -> dict:
        """Key numbers of a finished step: the final metrics its engine put in the lineage."""
        from workbench.checkpoint import Checkpoint

        metrics = (Checkpoint(output).lineage or {}).get("metrics") or {}
        return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                and any(word in k for word in KEY_METRIC_WORDS)}

    def report_blocks(self, step_id: str, output: Path) -> list[tuple]:
        """Sections of the run's report for this step's output (see recipe.report)."""
        return []

    def console_text(self, output: Path) -> str | None:
        """What `workbench run` prints of this step's output when the run ends."""
        return None


def as_strings(value):
    """Paths as strings and tuples as lists, recursively: what the engines' configs expect."""
    return replace_inputs(value, str)


def stand_ins(params: dict, stand_in: str) -> dict:
    """``params`` with every input (Ref, WithAdapter, Path) replaced by ``stand_in``."""
    return replace_inputs(params, lambda _: stand_in)


def dataclass_parameters(cls) -> dict[str, object]:
    """The options of an engine's config dataclass, seen flat (the same names as its CLI
    options; see ``workbench.training.fields``), except those the runner sets."""
    from workbench.training.fields import flat_fields

    return {flat.name: flat.type for flat in flat_fields(cls) if flat.name not in RUNNER_OWNED}


def build_config(cls, params: dict):
    """The engine's config from a step's flat parameters."""
    from workbench.training.fields import config_from_dict

    return config_from_dict(cls, params)


def validate_config(cls, step, stand_in: str) -> None:
    """Build the engine's config from the step's parameters, and the launch options that are
    options of it (fsdp), and run its own validate()."""
    from workbench.training.fields import flat_names

    launched = {k: v for k, v in step.launch.items() if k in flat_names(cls)}
    build_config(cls, {**stand_ins(step.params, stand_in), **launched, "out": stand_in}).validate()
