"""Run a validated recipe: steps in topological order, each cached by its fingerprint.

For each step the runner decides, just before its turn (when its inputs' fingerprints are
known), whether to run it or reuse its finished output, and says why. Outputs go to
runs/<name>/<step-id>/ and the runner's records to runs/<name>/state/. A step that fails
stops the run with its id and the engine's error; what finished before stays cached.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from workbench.checkpoint import Checkpoint, file_fingerprint
from workbench.errors import ConfigError, WorkbenchError
from workbench.recipe.executors import EXECUTORS
from workbench.recipe.fingerprint import ContentHashes, step_fingerprint
from workbench.recipe.kinds import TRAINING_KINDS
from workbench.recipe.schema import Recipe, Ref, Step, WithAdapter, iter_refs
from workbench.recipe.state import StepRecord, read_record, write_record


KEY_METRIC_WORDS = ("loss", "accuracy", "agreement", "perplexity")


class StepFailed(WorkbenchError):
    """A step's engine refused its input; the message names the step."""


@dataclass
class Decision:
    step: Step
    action: str  # run | cached | skip (not selected) | blocked (an input has no finished output)
    reason: str
    resume: bool = False
    fingerprint: str | None = None
    parts: dict = field(default_factory=dict)


@dataclass
class Selection:
    """Which steps may run: --only restricts, --from and --force re-run even when cached."""

    only: tuple[str, ...] = ()
    start: tuple[str, ...] = ()
    force: tuple[str, ...] = ()

    def resolve(self, recipe: Recipe) -> tuple[set[str], set[str]]:
        """(steps allowed to run, steps forced to run)."""
        allowed = set(_expand(recipe, self.only, "--only")) if self.only else set(recipe.steps)
        forced = set(_expand(recipe, self.force, "--force"))
        if self.start:
            downstream = {d for s in _expand(recipe, self.start, "--from") for d in recipe.downstream(s)}
            allowed &= downstream
            forced |= downstream
        return allowed, forced & allowed


def _expand(recipe: Recipe, names: tuple[str, ...], option: str) -> list[str]:
    """Step ids; a matrix step's written id stands for all its variants."""
    from workbench.errors import did_you_mean

    ids = []
    for name in names:
        hits = [s.id for s in recipe.steps.values() if name in (s.id, s.group)]
        if not hits:
            raise ConfigError(f"{option} {name}: no such step{did_you_mean(name, recipe.steps)}")
        ids.extend(hits)
    return ids


class Runner:
    def __init__(self, recipe: Recipe, runs_dir: str | Path = "runs", selection: Selection | None = None,
                 log=None):
        self.recipe = recipe
        self.run_dir = Path(runs_dir) / recipe.name
        self.allowed, self.forced = (selection or Selection()).resolve(recipe)
        self.hashes = ContentHashes()
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.outputs: dict[str, tuple[Path, str]] = {}  # step id -> (output path, fingerprint)

    # --- deciding --------------------------------------------------------------------------

    def plan(self) -> list[Decision]:
        """Every step's decision without running anything (--dry-run)."""
        decisions, will_run = [], set()
        for step in self.recipe.steps.values():
            rerun_inputs = [d for d in step.dependencies if d in will_run]
            if rerun_inputs and step.id in self.allowed:
                decision = Decision(step, "run", f"input '{rerun_inputs[0]}' runs first")
            elif rerun_inputs:
                decision = Decision(step, "skip", f"not selected (input '{rerun_inputs[0]}' changes)")
            else:
                decision = self.decide(step)
            if decision.action == "run":
                will_run.add(step.id)
            elif decision.action == "cached":
                self.outputs[step.id] = self._finished_output(step)
            decisions.append(decision)
        return decisions

    def decide(self, step: Step) -> Decision:
        """Run or cached, and why; every input must have a finished output by now."""
        params = self.effective_params(step)
        upstream = {ref.step: self.outputs[ref.step][1] for ref in iter_refs(params)
                    if ref.step in self.outputs}
        missing_inputs = [ref.step for ref in iter_refs(params) if ref.step not in upstream]
        if missing_inputs:
            action = "blocked" if step.id in self.allowed else "skip"
            return Decision(step, action, f"input '{missing_inputs[0]}' has no finished output")
        fingerprint, parts = step_fingerprint(step.kind, params, upstream, self.hashes)
        record = read_record(self.run_dir, step.id)
        reason, resume = self._why_run(step, record, fingerprint, parts)
        if reason is None:
            return Decision(step, "cached", "finished output with the same fingerprint", False,
                            fingerprint, parts)
        if step.id not in self.allowed:
            return Decision(step, "skip", f"not selected ({reason})", False, fingerprint, parts)
        return Decision(step, "run", reason, resume, fingerprint, parts)

    def _why_run(self, step: Step, record: StepRecord | None, fingerprint: str,
                 parts: dict) -> tuple[str | None, bool]:
        if step.id in self.forced:
            return "forced (--force/--from)", False
        if record is None:
            return "never run", False
        if record.fingerprint != fingerprint:
            changed = [k for k in parts if record.parts.get(k) != parts[k]]
            changed += [k for k in record.parts if k not in parts]
            return f"changed: {', '.join(changed)}", False
        if record.status == "running":
            resumable = step.kind in TRAINING_KINDS and (self.run_dir / step.id).is_dir()
            return ("interrupted: resumes from its last checkpoint" if resumable else "interrupted"), resumable
        if record.status == "failed":
            return "its last run failed", False
        if not self._output_intact(record):
            return "its output is missing or was modified", False
        return None, False

    def _output_intact(self, record: StepRecord) -> bool:
        try:
            return output_fingerprint(record.kind, self.run_dir / record.output) == record.output_fingerprint
        except (WorkbenchError, OSError):
            return False

    def _finished_output(self, step: Step) -> tuple[Path, str]:
        record = read_record(self.run_dir, step.id)
        return self.run_dir / record.output, record.output_fingerprint

    def effective_params(self, step: Step) -> dict:
        """The step's parameters plus what the runner adds: an eval step without a base gets
        the recipe's import step upstream of its models as the baseline."""
        if step.kind != "eval" or step.params.get("base") is not None:
            return step.params
        root = self._import_ancestor(step)
        if root is None:
            return step.params
        models = step.params["models"]
        return {**step.params, "models": models if Ref(root) in models else [Ref(root), *models]}

    def _import_ancestor(self, step: Step) -> str | None:
        pending, seen = list(step.dependencies), set()
        while pending:
            current = self.recipe.steps[pending.pop(0)]
            if current.id in seen:
                continue
            seen.add(current.id)
            if current.kind == "import":
                return current.id
            pending.extend(current.dependencies)
        return None

    # --- running ---------------------------------------------------------------------------

    def run(self) -> list[Decision]:
        steps = list(self.recipe.steps.values())
        self.log(f"recipe {self.recipe.name}: {len(steps)} steps -> {self.run_dir}/")
        done = []
        for index, step in enumerate(steps, start=1):
            decision = self.decide(step)
            done.append(decision)
            tag = f"[{index}/{len(steps)}] {step.id} ({step.kind})"
            if decision.action == "blocked":
                raise ConfigError(f"step '{step.id}': {decision.reason}; run that step too "
                                  "(drop --only/--from)")
            if decision.action == "skip":
                self.log(f"{tag} skipped: {decision.reason}")
                continue
            if decision.action == "cached":
                self.outputs[step.id] = self._finished_output(step)
                self.log(f"{tag} cached")
                continue
            left = [s.id for s in steps[index:]]
            self.log(f"{tag} running: {decision.reason}"
                     + (f" | then: {', '.join(left[:6])}{' ...' if len(left) > 6 else ''}" if left else ""))
            record = self._execute(step, decision)
            self.log(f"{tag} done in {format_seconds(record.seconds)}{format_metrics(record.metrics)}")
        return done

    def _execute(self, step: Step, decision: Decision) -> StepRecord:
        params = self.effective_params(step)
        record = StepRecord(step.id, step.kind, decision.fingerprint, decision.parts, "running",
                            started=time.time(), inputs=_input_names(params))
        write_record(self.run_dir, record)
        resolved = self._resolve(params)
        if step.kind == "eval":
            resolved["labels"] = [_label(v) for v in params["models"]]
        try:
            output = EXECUTORS[step.kind](resolved, self.run_dir / step.id, decision.resume)
        except WorkbenchError as exc:
            record.status, record.error = "failed", str(exc)
            record.seconds = round(time.time() - record.started, 1)
            write_record(self.run_dir, record)
            raise StepFailed(f"step '{step.id}' ({step.kind}) failed: {exc}") from exc
        except BaseException as exc:
            if not isinstance(exc, KeyboardInterrupt):
                self.log(f"step '{step.id}' ({step.kind}) crashed; the traceback follows")
            raise
        record.status = "done"
        record.output = _portable(Path(output), self.run_dir)
        record.output_fingerprint = output_fingerprint(step.kind, output)
        record.metrics = output_metrics(step.kind, output)
        record.seconds = round(time.time() - record.started, 1)
        write_record(self.run_dir, record)
        self.outputs[step.id] = (output, record.output_fingerprint)
        return record

    def _resolve(self, value):
        if isinstance(value, Ref):
            return self.outputs[value.step][0] / value.path
        if isinstance(value, WithAdapter):
            return f"{self._resolve(value.model)}+{self._resolve(value.adapter)}"
        if isinstance(value, dict):
            return {k: self._resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._resolve(v) for v in value]
        return value


def _portable(output: Path, run_dir: Path) -> str:
    """The output relative to the run directory when inside it (so a moved checkout keeps its
    cache), absolute otherwise (an imported checkpoint elsewhere)."""
    try:
        return output.resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return str(output.resolve())


def _label(value) -> str:
    return value.step if isinstance(value, Ref) else Path(value).name


def _input_names(params: dict) -> dict:
    """parameter -> step id(s) or path(s) of its input checkpoints, for the lineage."""
    names = {}
    for key, value in params.items():
        refs = list(iter_refs(value))
        if refs:
            names[key] = refs[0].step if isinstance(value, Ref) else [r.step for r in refs]
        elif isinstance(value, Path) and value.is_dir():
            names[key] = str(value)
    return names


def output_fingerprint(kind: str, output: Path) -> str:
    if kind == "eval":
        return file_fingerprint(output / "eval.json")
    return Checkpoint(output).fingerprint()


def output_metrics(kind: str, output: Path) -> dict:
    """Key numbers of a finished step: the final metrics its engine put in the lineage."""
    if kind == "eval":
        return {}
    metrics = (Checkpoint(output).lineage or {}).get("metrics") or {}
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and any(word in k for word in KEY_METRIC_WORDS)}


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def format_metrics(metrics: dict, limit: int = 4) -> str:
    shown = list(metrics.items())[:limit]
    return "".join(f" | {k} {v:.4g}" if isinstance(v, float) else f" | {k} {v}" for k, v in shown)
