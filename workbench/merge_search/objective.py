"""The objective of a search: each term measured on a model held in memory with the evaluate
engine's functions, then combined into one number, lower is better.

- ``loss``: mean cross-entropy over the assistant tokens of the file (teacher-forced);
- ``exact_match``: share of greedy answers equal to the expected ones; enters as 1 - match;
- ``kl``: KL(reference || model) of the next-token distributions on the assistant tokens,
  against a reference checkpoint whose log-probabilities are computed once per search.

The combined objective is the weighted sum of the terms as they enter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workbench import evaluate
from workbench.checkpoint import Checkpoint
from workbench.data import load_conversations, tokenize_conversation
from workbench.errors import ConfigError
from workbench.merge_search.space import SearchSpec, Term

TERM_LABELS = {"loss": "loss", "exact_match": "1-exact_match", "kl": "kl"}


@dataclass
class PreparedTerm:
    term: Term
    label: str  # its column in trials.csv: '<data name> <metric>'
    examples: list  # tokenized conversations (loss, kl)
    prompts: list  # prompts and expected answers (exact_match)
    reference: object = None  # [tokens, vocab] log-probabilities (kl)


class Objective:
    """Measures models on the search's terms; data is read and tokenized once."""

    def __init__(self, spec: SearchSpec, tokenizer):
        self.spec = spec
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        names = data_names([t.data for t in spec.objective])
        self.terms = []
        for term, name in zip(spec.objective, names):
            conversations = load_conversations(term.data)
            examples = [tokenize_conversation(tokenizer, c, spec.max_length) for c in conversations]
            prompts = [evaluate.prompt_of(c) for c in conversations] if term.metric == "exact_match" else []
            label = f"{name} {TERM_LABELS[term.metric]}"
            if any(t.label == label for t in self.terms):
                raise ConfigError(f"{spec.source}: search.objective names '{label}' twice")
            self.terms.append(PreparedTerm(term, label, examples, prompts))

    @property
    def labels(self) -> list[str]:
        return [t.label for t in self.terms]

    def measurement(self) -> dict:
        """What the measurements depend on besides the model (for the trial fingerprint)."""
        from workbench.checkpoint import file_fingerprint

        return {
            "terms": [{"data": file_fingerprint(t.term.data), "metric": t.term.metric,
                       "reference": Checkpoint(t.term.reference).fingerprint() if t.term.reference else None}
                      for t in self.terms],
            "max_length": self.spec.max_length, "batch_size": self.spec.batch_size,
            "max_new_tokens": self.spec.max_new_tokens,
        }

    def prepare_references(self) -> None:
        """Load each kl term's reference model once and keep its log-probabilities."""
        from workbench.modeling import load_model, load_tokenizer

        for prepared in self.terms:
            if prepared.term.metric != "kl" or prepared.reference is not None:
                continue
            path = prepared.term.reference
            theirs = [tokenize_conversation(load_tokenizer(path), c, self.spec.max_length)
                      for c in load_conversations(prepared.term.data)]
            if [e.input_ids for e in theirs] != [e.input_ids for e in prepared.examples]:
                raise ConfigError(f"{self.spec.source}: kl reference '{path}' tokenizes {prepared.term.data} "
                                  "differently from the merge; KL needs the same tokenizer")
            model = load_model(path)
            prepared.reference = evaluate.supervised_logprobs(model, prepared.examples, self.pad_id,
                                                              self.spec.batch_size)
            del model

    def measure(self, model) -> dict[str, float]:
        """Each term's value as it enters the objective, by label."""
        values = {}
        for prepared in self.terms:
            metric = prepared.term.metric
            if metric == "loss":
                value = evaluate.token_metrics(model, prepared.examples, self.pad_id, self.spec.batch_size).loss
            elif metric == "exact_match":
                answers = evaluate.greedy_answers(model, self.tokenizer, prepared.prompts,
                                                  max_new_tokens=self.spec.max_new_tokens,
                                                  batch_size=self.spec.batch_size)
                value = 1.0 - evaluate.match_rate(answers, [p.expected for p in prepared.prompts], "exact")
            else:
                value = evaluate.mean_kl(prepared.reference, model, prepared.examples, self.pad_id,
                                         self.spec.batch_size)
            values[prepared.label] = value
        return values

    def combine(self, values: dict[str, float]) -> float:
        return sum(p.term.weight * values[p.label] for p in self.terms)


def data_names(paths: list[Path]) -> list[str]:
    """Short names for data files: 'dates/valid' (parent/stem), as the eval table names them
    when stems repeat, always here so that columns read the same in every search."""
    return [f"{p.parent.name}/{p.stem}" if p.parent.name else p.stem for p in paths]
