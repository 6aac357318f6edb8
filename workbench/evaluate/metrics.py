"""The numbers of an evaluation: teacher-forced loss, perplexity, bits per byte and token
accuracy on the assistant tokens, and how greedy answers compare with the expected ones and with a
reference model's (whole answers, and token by token: the top-1 agreement a distillation run
reports; and whole next-token distributions: the KL to the reference's).

Loss and accuracy are averaged over every supervised token of the file (not per example),
the way the training loop reports them, so the numbers are comparable with its events.

Loss per token depends on the tokenizer (a tokenizer with longer tokens has fewer, harder
ones), so models with different tokenizers compare in bits per byte instead: the summed loss
in bits divided by the UTF-8 bytes of the supervised assistant texts, a denominator the same
for every tokenizer. The numerator also holds each turn's end-of-turn token(s), which every
model must predict in its own template.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from workbench.data.batching import pad_collate
from workbench.data.loading import Conversation
from workbench.data.tokenize import IGNORE_INDEX, TokenizedExample


@dataclass
class TokenMetrics:
    loss: float
    perplexity: float
    token_accuracy: float
    tokens: int
    targets: list[int]  # the supervised tokens, in order
    predictions: list[int]  # the model's top-1 token at each of them


@torch.no_grad()
def token_metrics(model, examples: list[TokenizedExample], pad_id: int, batch_size: int) -> TokenMetrics:
    total_loss, correct, count = 0.0, 0, 0
    all_targets: list[int] = []
    all_predictions: list[int] = []
    for start in range(0, len(examples), batch_size):
        batch = pad_collate(examples[start:start + batch_size], pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits = logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        mask = labels != IGNORE_INDEX
        picked = logits[mask]
        targets = labels[mask]
        predictions = picked.argmax(-1)
        total_loss += torch.nn.functional.cross_entropy(picked, targets, reduction="sum").item()
        correct += (predictions == targets).sum().item()
        count += targets.numel()
        all_targets += targets.tolist()
        all_predictions += predictions.tolist()
    loss = total_loss / count
    return TokenMetrics(loss=loss, perplexity=math.exp(min(loss, 700.0)), token_accuracy=correct / count,
                        tokens=count, targets=all_targets, predictions=all_predictions)


@torch.no_grad()
def supervised_logprobs(model, examples: list[TokenizedExample], pad_id: int, batch_size: int) -> torch.Tensor:
    """[supervised tokens, vocab] float32 log-probabilities of the model's next token at each
    supervised position, in order: a reference distribution for ``mean_kl``. Memory is
    tokens x vocab x 4 bytes (600 tokens of a 49k vocab: 118 MB)."""
    parts = []
    for start in range(0, len(examples), batch_size):
        batch = pad_collate(examples[start:start + batch_size], pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        mask = batch["labels"][:, 1:] != IGNORE_INDEX
        parts.append(torch.log_softmax(logits[:, :-1][mask].float(), dim=-1))
    return torch.cat(parts)


@torch.no_grad()
def mean_kl(reference: torch.Tensor, model, examples: list[TokenizedExample], pad_id: int,
            batch_size: int) -> float:
    """KL(reference || model) of the next-token distributions, averaged over the supervised
    tokens of ``examples`` (``reference`` from ``supervised_logprobs`` on the same examples)."""
    total, offset = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = pad_collate(examples[start:start + batch_size], pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        mask = batch["labels"][:, 1:] != IGNORE_INDEX
        mine = torch.log_softmax(logits[:, :-1][mask].float(), dim=-1)
        theirs = reference[offset:offset + mine.shape[0]]
        if theirs.shape != mine.shape:
            raise ValueError(f"reference log-probs {tuple(reference.shape)} do not match the examples")
        total += torch.nn.functional.kl_div(mine, theirs, log_target=True, reduction="sum").item()
        offset += mine.shape[0]
    if offset != reference.shape[0]:
        raise ValueError(f"reference has {reference.shape[0]} tokens, the examples {offset}")
    return total / offset


def supervised_bytes(conversation: Conversation) -> int:
    """UTF-8 bytes of the assistant messages the loss covers (those with weight 1)."""
    return sum(len(m.content.encode("utf-8")) for m in conversation.messages
               if m.role == "assistant" and m.weight)


def bits_per_byte(tokens: TokenMetrics, num_bytes: int) -> float:
    """The summed loss (nats) in bits, per byte of supervised text."""
    return tokens.loss * tokens.tokens / math.log(2) / num_bytes


def normalize(text: str) -> str:
    """Case and surrounding whitespace do not count."""
    return text.strip().casefold()


def answer_matches(answer: str, expected: str, mode: str) -> bool:
    """exact: equal after normalizing; contains: the expected answer appears in the answer;
    regex: the expected text is a regular expression the whole answer must match."""
    if mode == "exact":
        return normalize(answer) == normalize(expected)
    if mode == "contains":
        return normalize(expected) in normalize(answer)
    if mode == "regex":
        return re.fullmatch(expected.strip(), answer.strip(), re.IGNORECASE | re.DOTALL) is not None
    raise ValueError(mode)


def match_rate(answers: list[str], expected: list[str], mode: str) -> float:
    return sum(answer_matches(a, e, mode) for a, e in zip(answers, expected)) / len(expected)


def token_agreement(tokens: TokenMetrics, reference: TokenMetrics) -> float | None:
    """Share of the supervised tokens where two models predict the same next token, both fed
    the reference answer; None when their tokenizers split the answers differently."""
    if tokens.targets != reference.targets:
        return None
    same = sum(a == b for a, b in zip(tokens.predictions, reference.predictions))
    return same / len(reference.predictions)


def agreement(answers: list[str], reference_answers: list[str]) -> float:
    """Share of prompts where two models give the same greedy answer (normalized)."""
    same = sum(normalize(a) == normalize(r) for a, r in zip(answers, reference_answers))
    return same / len(reference_answers)
