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

from workbench.errors import ConfigError, WorkbenchError
from workbench.recipe.fingerprint import ContentHashes, step_fingerprint
from workbench.recipe.kinds import StepCall, StepKind
from workbench.recipe.refs import Ref, WithAdapter, iter_refs, replace_inputs
from workbench.recipe.schema import Recipe, Step
from workbench.recipe.state import StepRecord, read_record, write_record


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
        # launch options count like parameters: how many processes train changes the result
        fingerprint, parts = step_fingerprint(step.kind, {**params, **step.launch}, upstream, self.hashes)
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
            resumable = step.spec.trains and (self.run_dir / step.id).is_dir()
            return ("interrupted: resumes from its last checkpoint" if resumable else "interrupted"), resumable
        if record.status == "failed":
            return "its last run failed", False
        if not self._output_intact(step, record):
            return "its output is missing or was modified", False
        return None, False

    def _output_intact(self, step: Step, record: StepRecord) -> bool:
        try:
            return step.spec.output_fingerprint(self.run_dir / record.output) == record.output_fingerprint
        except (WorkbenchError, OSError):
            return False

    def _finished_output(self, step: Step) -> tuple[Path, str]:
        record = read_record(self.run_dir, step.id)
        return self.run_dir / record.output, record.output_fingerprint

    def effective_params(self, step: Step) -> dict:
        """The step's parameters plus what its kind adds (see StepKind.prepare)."""
        return step.spec.prepare(step, self.recipe)

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
        call = StepCall(replace_inputs(params, self._path_of), params, self.run_dir / step.id, decision.resume,
                        dict(step.launch))
        try:
            output = Path(self._invoke(step.spec, call))
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
        record.output = _portable(output, self.run_dir)
        record.output_fingerprint = step.spec.output_fingerprint(output)
        record.metrics = step.spec.metrics(output)
        record.seconds = round(time.time() - record.started, 1)
        write_record(self.run_dir, record)
        self.outputs[step.id] = (output, record.output_fingerprint)
        return record

    @staticmethod
    def _invoke(kind: StepKind, call: StepCall) -> Path:
        """The one place a step is launched: in this process, by its kind; or, when its launch
        options ask for several processes, as the torchrun processes the kind describes."""
        processes = kind.processes(call)
        if processes is not None:
            from workbench.recipe.processes import run_processes

            return run_processes(processes, call.out)
        return kind.run(call)

    def _path_of(self, value) -> str:
        """An input as the engines take it: a step's output (or a path inside it), a
        checkpoint with an adapter as MODEL+LORA, a path as a string."""
        if isinstance(value, Ref):
            return str(self.outputs[value.step][0] / value.path)
        if isinstance(value, WithAdapter):
            return f"{self._path_of(value.model)}+{self._path_of(value.adapter)}"
        return str(value)


def _portable(output: Path, run_dir: Path) -> str:
    """The output relative to the run directory when inside it (so a moved checkout keeps its
    cache), absolute otherwise (an imported checkpoint elsewhere)."""
    try:
        return output.resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return str(output.resolve())


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


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def format_metrics(metrics: dict, limit: int = 4) -> str:
    shown = list(metrics.items())[:limit]
    return "".join(f" | {k} {v:.4g}" if isinstance(v, float) else f" | {k} {v}" for k, v in shown)
