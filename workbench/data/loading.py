"""Read chat JSONL into validated conversations, reporting every bad line at once.

Two line formats are accepted:

- chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": "...", "weight": 0|1}]}``
  (``weight`` is optional, only on assistant messages, as in OpenAI's fine-tuning format: 0 keeps
  the turn as context but leaves it out of the loss);
- prompt/completion: ``{"prompt": "...", "completion": "..."}``, read as one user turn and one
  assistant turn (each side may also be a list of messages, as in TRL's conversational form).

A line with both ``messages`` and ``prompt``/``completion`` is an error: one of them would be ignored.

A file with any problem raises one ``DataError`` whose message has one line per problem,
``file:line: what is wrong``, so a user fixes them all in one pass.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import DataError, did_you_mean

ROLES = ("system", "user", "assistant")
MIN_EXAMPLES = 10
MAX_REPORTED_PROBLEMS = 50


class DataWarning(UserWarning):
    """Data that is valid but probably not what the user meant (e.g. very few examples)."""


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    weight: int = 1


@dataclass(frozen=True)
class Conversation:
    """One training example; ``source`` is ``file:line`` for messages about it."""

    messages: tuple[Message, ...]
    source: str

    def as_dicts(self) -> list[dict[str, str]]:
        """The messages in the shape chat templates expect."""
        return [{"role": m.role, "content": m.content} for m in self.messages]

    def key(self) -> tuple:
        """Identity for de-duplication: same messages, contents and weights."""
        return tuple((m.role, m.content, m.weight) for m in self.messages)


def load_conversations(path: str | os.PathLike) -> list[Conversation]:
    """All conversations of a JSONL file, or one DataError listing every problem in it.

    Blank lines are skipped. Fewer than ``MIN_EXAMPLES`` examples gives a ``DataWarning``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such data file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a JSONL file") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None

    conversations, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            conversations.append(Conversation(_parse_line(line), where))
        except _LineProblem as problem:
            problems.append(f"{where}: {problem}")
    if not conversations and not problems:
        problems.append(f"{path}: empty file, expected one JSON object per line")
    if problems:
        raise DataError(join_problems(problems))
    if len(conversations) < MIN_EXAMPLES:
        warnings.warn(f"{path}: only {len(conversations)} examples (fewer than {MIN_EXAMPLES}); "
                      "training on so few rarely generalizes", DataWarning, stacklevel=2)
    return conversations


class _LineProblem(Exception):
    """What is wrong with one line (the caller adds file:line)."""


def join_problems(problems: list[str]) -> str:
    """One line per problem, cut after MAX_REPORTED_PROBLEMS so the message stays readable."""
    shown = problems[:MAX_REPORTED_PROBLEMS]
    if len(problems) > len(shown):
        shown.append(f"... and {len(problems) - len(shown)} more problems")
    return "\n".join(shown)


def _parse_line(line: str) -> tuple[Message, ...]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _LineProblem(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise _LineProblem(f"expected a JSON object, got {type(record).__name__}")
    pair = [key for key in ("prompt", "completion") if key in record]
    if "messages" in record and pair:
        raise _LineProblem(f"has both 'messages' and {' and '.join(repr(k) for k in pair)}; "
                           "a line is either a chat or a prompt/completion pair, not both")
    if "messages" in record:
        messages = _parse_messages(record["messages"], "messages")
    elif "prompt" in record or "completion" in record:
        messages = _parse_prompt_completion(record)
    else:
        keys = ", ".join(sorted(record)) or "none"
        raise _LineProblem(f"no 'messages' list (nor 'prompt'/'completion'); keys found: {keys}")
    if not any(m.role == "assistant" for m in messages):
        raise _LineProblem("no assistant message, so nothing to learn from")
    return messages


def _parse_prompt_completion(record: dict) -> tuple[Message, ...]:
    for key in ("prompt", "completion"):
        if key not in record:
            raise _LineProblem(f"'{key}' is missing (a prompt/completion line needs both)")
    prompt, completion = record["prompt"], record["completion"]
    if isinstance(prompt, list) and isinstance(completion, list):
        return _parse_messages(prompt, "prompt") + _parse_messages(completion, "completion")
    for key, value in (("prompt", prompt), ("completion", completion)):
        if not isinstance(value, str):
            raise _LineProblem(f"'{key}' must be a string, got {type(value).__name__}")
    return Message("user", prompt), Message("assistant", completion)


def _parse_messages(messages, key: str) -> tuple[Message, ...]:
    if not isinstance(messages, list):
        raise _LineProblem(f"'{key}' must be a list of messages, got {type(messages).__name__}")
    if not messages:
        raise _LineProblem(f"'{key}' is an empty list")
    return tuple(_parse_message(m, f"{key}[{i}]") for i, m in enumerate(messages))


def _parse_message(message, where: str) -> Message:
    if not isinstance(message, dict):
        raise _LineProblem(f"{where} must be an object with 'role' and 'content'")
    role = message.get("role")
    if role not in ROLES:
        hint = did_you_mean(role, ROLES) if isinstance(role, str) else ""
        shown = "missing" if role is None else repr(role)
        raise _LineProblem(f"{where}: role {shown} is not one of {', '.join(ROLES)}{hint}")
    if "content" not in message:
        raise _LineProblem(f"{where}: 'content' is missing")
    content = message["content"]
    if not isinstance(content, str):
        raise _LineProblem(f"{where}: 'content' must be a string, got {type(content).__name__}")
    weight = message.get("weight", 1)
    if weight not in (0, 1) or isinstance(weight, bool):
        raise _LineProblem(f"{where}: 'weight' must be 0 or 1, got {weight!r}")
    if "weight" in message and role != "assistant":
        raise _LineProblem(f"{where}: 'weight' is only allowed on assistant messages")
    return Message(role, content, int(weight))
