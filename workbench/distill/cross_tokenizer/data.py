"""Training rows for distillation across tokenizers: the student's example (what the usual
padding and packing see), the teacher's tokenization of the same conversation, and the pairs of
targets that continue the same text (``pairing``).

Rows are made from the student's prepared examples (after de-duplication, split and
truncation), so the student side is exactly what same-tokenizer distillation would train on.
The teacher side is cut to the same ``max_length``; pairs whose target either side cut are
dropped. In a batch the pairs index the supervised targets of each side in the order
``supervised_hidden_states`` returns them (row by row, examples in row order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from workbench.data.loading import Conversation, load_conversations
from workbench.data.tokenize import TokenizedExample
from workbench.distill.cache import supervised_next_tokens
from workbench.distill.cross_tokenizer.pairing import pair_targets, tokenize_with_keys
from workbench.errors import DataError


@dataclass(frozen=True)
class CrossExample(TokenizedExample):
    """A student example plus the teacher's tokens and the (student, teacher) target pairs."""

    teacher: TokenizedExample = field(default=None)
    pairs: tuple[tuple[int, int], ...] = ()


def cross_examples(examples: Sequence[TokenizedExample], conversations: dict[str, Conversation],
                   student_tokenizer, teacher_tokenizer, max_length: int | None) -> list[CrossExample]:
    """The student's prepared examples with their teacher side (looked up by source file:line)."""
    rows = []
    for example in examples:
        conversation = conversations[example.source]
        student = tokenize_with_keys(student_tokenizer, conversation)
        teacher = tokenize_with_keys(teacher_tokenizer, conversation)
        teacher_example = teacher.example
        if max_length is not None and len(teacher_example) > max_length:
            teacher_example = TokenizedExample(teacher_example.input_ids[:max_length],
                                               teacher_example.labels[:max_length], teacher_example.source)
        kept_student, kept_teacher = supervised_next_tokens(example), supervised_next_tokens(teacher_example)
        pairs = tuple((s, t) for s, t in pair_targets(student.keys, teacher.keys)
                      if s < kept_student and t < kept_teacher)
        if not pairs:
            raise DataError(f"{example.source}: no student token continues the same text as a teacher token "
                            "(nothing to distill across tokenizers)")
        rows.append(CrossExample(example.input_ids, example.labels, example.source, teacher_example, pairs))
    return rows


def conversations_by_source(*paths) -> dict[str, Conversation]:
    return {c.source: c for path in paths if path for c in load_conversations(path)}


def cross_collate(collate, teacher_collate):
    """A collate for rows of CrossExamples (or packed lists of them): the student batch from
    ``collate``, the teacher's under ``teacher_*`` keys, and the pairs as global target indices."""

    def collate_cross(rows: Sequence) -> dict:
        batch = collate(rows)
        teacher_rows = [[e.teacher for e in row] if isinstance(row, list) else row.teacher for row in rows]
        batch.update({f"teacher_{key}": value for key, value in teacher_collate(teacher_rows).items()})
        student_index, teacher_index, s_seen, t_seen = [], [], 0, 0
        for row in rows:
            for example in row if isinstance(row, list) else [row]:
                for s, t in example.pairs:
                    student_index.append(s_seen + s)
                    teacher_index.append(t_seen + t)
                s_seen += supervised_next_tokens(example)
                t_seen += supervised_next_tokens(example.teacher)
        batch["pair_student"] = torch.tensor(student_index, dtype=torch.long)
        batch["pair_teacher"] = torch.tensor(teacher_index, dtype=torch.long)
        return batch

    return collate_cross


def teacher_view(batch: dict) -> dict:
    """The teacher's part of a cross-tokenizer batch, under the usual keys."""
    return {key[len("teacher_"):]: value for key, value in batch.items() if key.startswith("teacher_")}
