"""Training rows for distillation across tokenizers: the student's example (what the usual
padding and packing see), the teacher's tokenization of the same conversation, and the pairs of
targets that continue the same text (``pairing``).

Rows are made from the student's prepared examples (after de-duplication, split and
truncation), so the student side is exactly what same-tokenizer distillation would train on.
The teacher side is cut to the same ``max_length``; pairs whose target either side cut are
dropped. Each pair also has the end of its span on each side (``spans``). In a batch the pairs
and span ends index the supervised targets of each side in the order ``supervised_hidden_states``
returns them (row by row, examples in row order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from workbench.data.loading import Conversation, load_conversations
from workbench.data.tokenize import TokenizedExample
from workbench.distill.cache import supervised_next_tokens
from workbench.distill.cross_tokenizer.pairing import pair_targets, tokenize_with_keys
from workbench.distill.cross_tokenizer.spans import span_ends
from workbench.errors import DataError


@dataclass(frozen=True)
class CrossExample(TokenizedExample):
    """A student example plus the teacher's tokens, the (student, teacher) target pairs and the
    (student, teacher) exclusive end of each pair's span."""

    teacher: TokenizedExample = field(default=None)
    pairs: tuple[tuple[int, int], ...] = ()
    span_ends: tuple[tuple[int, int], ...] = ()


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
        rows.append(CrossExample(example.input_ids, example.labels, example.source, teacher_example, pairs,
                                 tuple(span_ends(list(pairs), student.keys))))
    return rows


def conversations_by_source(*paths) -> dict[str, Conversation]:
    return {c.source: c for path in paths if path for c in load_conversations(path)}


def cross_collate(collate, teacher_collate):
    """A collate for rows of CrossExamples (or packed lists of them): the student batch from
    ``collate``, the teacher's under ``teacher_*`` keys, and the pairs and their span ends as
    global target indices."""

    def collate_cross(rows: Sequence) -> dict:
        batch = collate(rows)
        teacher_rows = [[e.teacher for e in row] if isinstance(row, list) else row.teacher for row in rows]
        batch.update({f"teacher_{key}": value for key, value in teacher_collate(teacher_rows).items()})
        index = {key: [] for key in ("pair_student", "pair_teacher", "pair_student_end", "pair_teacher_end")}
        s_seen, t_seen = 0, 0
        for row in rows:
            for example in row if isinstance(row, list) else [row]:
                for (s, t), (s_end, t_end) in zip(example.pairs, example.span_ends):
                    index["pair_student"].append(s_seen + s)
                    index["pair_teacher"].append(t_seen + t)
                    index["pair_student_end"].append(s_seen + s_end)
                    index["pair_teacher_end"].append(t_seen + t_end)
                s_seen += supervised_next_tokens(example)
                t_seen += supervised_next_tokens(example.teacher)
        batch.update({key: torch.tensor(values, dtype=torch.long) for key, values in index.items()})
        return batch

    return collate_cross


def teacher_view(batch: dict) -> dict:
    """The teacher's part of a cross-tokenizer batch, under the usual keys."""
    return {key[len("teacher_"):]: value for key, value in batch.items() if key.startswith("teacher_")}
