"""Evaluate several checkpoints on held-out chat data and compare them in one table.

The baseline (the base model a user gets by prompting alone) is always in the table: given
with ``base``, or found by following the first model's lineage back to its root.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from workbench.checkpoint import Checkpoint
from workbench.data.loading import load_conversations
from workbench.data.tokenize import tokenize_conversation, truncate_example
from workbench.errors import DataError
from workbench.evaluate.answers import greedy_answers, prompt_of
from workbench.evaluate.config import EvalConfig
from workbench.evaluate.metrics import (TokenMetrics, agreement, bits_per_byte, match_rate, supervised_bytes,
                                        token_agreement, token_metrics)
from workbench.evaluate.table import write_outputs
from workbench.modeling import pad_token_id

LINEAGE_PARENT_ROLES = ("model", "base_model", "base", "teacher", "student")


@dataclass
class ModelOutputs:
    """What one model did on one data file, kept to compare it with the reference's."""
    answers: list[str]  # greedy, one per prompt
    tokens: TokenMetrics


def run(config: EvalConfig, log=None) -> dict:
    """Metrics of every model on every data file; writes eval.json and eval.md to
    ``config.out`` when set. ``log`` receives one line per model evaluated."""
    config.validate()
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    entries = _model_entries(config)
    datasets = [_load_dataset(Path(p), config) for p in config.data]
    if len({d["name"] for d in datasets}) < len(datasets):  # dates/valid.jsonl, records/valid.jsonl
        for d in datasets:
            d["name"] = f"{d['path'].parent.name}/{d['path'].stem}"
    outputs: dict[tuple[str, str], ModelOutputs] = {}
    results = []
    for entry in entries:
        started = time.perf_counter()
        model, tokenizer = _load(entry["path"])
        for data in datasets:
            row = _evaluate_one(model, tokenizer, data, config)
            outputs[entry["path"], data["name"]] = row.pop("outputs")
            results.append({"model": entry["label"], "data": data["name"], **row})
        entry["seconds"] = round(time.perf_counter() - started, 1)
        log(f"evaluated {entry['label']} in {entry['seconds']:.1f}s")
        del model
    reference = _reference_outputs(config, entries, datasets, outputs)
    for row, entry_data in zip(results, [(e, d) for e in entries for d in datasets]):
        entry, data = entry_data
        mine = outputs[entry["path"], data["name"]]
        theirs = reference[data["name"]] if reference else None
        row["agreement"] = agreement(mine.answers, theirs.answers) if theirs else None
        row["token_agreement"] = token_agreement(mine.tokens, theirs.tokens) if theirs else None
    report = {
        "match": config.match,
        "reference": config.reference and str(Path(config.reference).resolve()),
        "models": entries,
        "data": [{"name": d["name"], "path": str(d["path"]), "examples": len(d["prompts"])} for d in datasets],
        "results": results,
        "side_by_side": _side_by_side(entries, datasets, outputs, config.side_by_side),
    }
    if config.out:
        write_outputs(report, Path(config.out))
    return report


def _model_entries(config: EvalConfig) -> list[dict]:
    paths = [str(Checkpoint(p).path.resolve()) for p in config.models]
    labels = list(config.labels) or _labels(paths)
    base = config.base or lineage_root(paths[0])
    base = str(Checkpoint(base).path.resolve()) if base else paths[0]
    entries = [{"label": label, "path": path, "baseline": path == base} for label, path in zip(labels, paths)]
    if base not in paths:
        entries.insert(0, {"label": _labels([base])[0], "path": base, "baseline": True})
    entries.sort(key=lambda e: not e["baseline"])
    return entries


def _labels(paths: list[str]) -> list[str]:
    """Directory names, with the parent added where two would read the same."""
    names = [Path(p).name for p in paths]
    return [f"{Path(p).parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names)]


def lineage_root(path: str) -> str | None:
    """Follow the lineage's parent checkpoint (model, base_model, teacher, ...) to the model
    everything started from; None when the checkpoint records no parent that still exists."""
    seen, current = set(), Path(path).resolve()
    while str(current) not in seen:
        seen.add(str(current))
        inputs = (Checkpoint(current).lineage or {}).get("inputs", {})
        parents = [inputs[r]["path"] for r in LINEAGE_PARENT_ROLES if r in inputs]
        parents += [v["path"] for v in inputs.values()]
        parents = [Path(p) for p in parents if (Path(p) / "config.json").is_file()]
        if not parents:
            break
        current = parents[0].resolve()
    return str(current) if str(current) != str(Path(path).resolve()) else None


def _load_dataset(path: Path, config: EvalConfig) -> dict:
    conversations = load_conversations(path)
    if config.limit:
        conversations = conversations[:config.limit]
    prompts = [prompt_of(c) for c in conversations]
    if config.match == "regex":
        for p in prompts:
            try:
                re.compile(p.expected.strip())
            except re.error as exc:
                raise DataError(f"{p.source}: expected answer is not a valid regular expression "
                                f"for --match regex ({exc})") from None
    return {"name": path.stem, "path": path.resolve(), "conversations": conversations, "prompts": prompts}


def _load(path: str):
    from workbench.modeling import load_model, load_tokenizer

    return load_model(path), load_tokenizer(path)


def _evaluate_one(model, tokenizer, data: dict, config: EvalConfig) -> dict:
    examples = [tokenize_conversation(tokenizer, c) for c in data["conversations"]]
    truncated = any(len(e) > config.max_length for e in examples)
    examples = [truncate_example(e, config.max_length) if len(e) > config.max_length else e for e in examples]
    tokens = token_metrics(model, examples, pad_token_id(tokenizer), config.batch_size)
    answers = greedy_answers(model, tokenizer, data["prompts"], max_new_tokens=config.max_new_tokens,
                             batch_size=config.batch_size)
    expected = [p.expected for p in data["prompts"]]
    return {
        "loss": tokens.loss,
        "perplexity": tokens.perplexity,
        # a truncated answer no longer covers its text's bytes: no fair figure then
        "bits_per_byte": None if truncated else bits_per_byte(
            tokens, sum(supervised_bytes(c) for c in data["conversations"])),
        "token_accuracy": tokens.token_accuracy,
        "match": match_rate(answers, expected, config.match),
        "tokens": tokens.tokens,
        "examples": len(expected),
        "outputs": ModelOutputs(answers, tokens),
    }


def _reference_outputs(config: EvalConfig, entries: list[dict], datasets: list[dict],
                       outputs: dict) -> dict[str, ModelOutputs] | None:
    if not config.reference:
        return None
    path = str(Checkpoint(config.reference).path.resolve())
    if any(e["path"] == path for e in entries):
        return {d["name"]: outputs[path, d["name"]] for d in datasets}
    model, tokenizer = _load(path)
    return {d["name"]: _evaluate_one(model, tokenizer, d, config)["outputs"] for d in datasets}


def _side_by_side(entries: list[dict], datasets: list[dict], outputs: dict, count: int) -> list[dict]:
    rows = []
    for data in datasets:
        for i, prompt in enumerate(data["prompts"][:count]):
            rows.append({
                "data": data["name"],
                "source": prompt.source,
                "prompt": prompt.question,
                "expected": prompt.expected,
                "answers": {e["label"]: outputs[e["path"], data["name"]].answers[i] for e in entries},
            })
    return rows
