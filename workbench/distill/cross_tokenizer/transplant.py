"""Embedding rows for a student with another tokenizer than its teacher (``student init --tokenizer``).

Each token of the new vocabulary gets the teacher's row of the token that spells the same bytes
(``vocab_map``'s spelling) when there is one, otherwise the mean of the teacher rows of its
decomposition: the teacher tokenizer's tokens for the token's text, or its single-byte tokens
for a piece of a character, as tokenizer-transplant tools (e.g. mergekit-tokensurgeon's
"mean of subtokens") do. A token that neither gives (a special token of the new template, a byte
the teacher vocabulary cannot spell) gets the mean of all teacher rows; the report counts each
kind. The new end-of-sequence token takes the teacher's end-of-sequence row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.distill.cross_tokenizer.vocab_map import token_bytes


@dataclass
class TransplantReport:
    exact: int = 0
    decomposed: int = 0
    fallback: int = 0

    def to_dict(self) -> dict:
        return {"exact": self.exact, "decomposed": self.decomposed, "fallback": self.fallback}


def row_sources(new_tokenizer, teacher_tokenizer, new_vocab: int) -> tuple[list[list[int]], TransplantReport]:
    """For each new id < ``new_vocab``: the teacher ids whose rows it averages ([] = all rows)."""
    teacher_spelled = token_bytes(teacher_tokenizer)
    teacher_by_bytes, single_bytes = {}, {}
    for i, spelled in sorted(teacher_spelled.items()):
        teacher_by_bytes.setdefault(spelled, i)
        if len(spelled) == 1:
            single_bytes.setdefault(spelled[0], i)
    new_spelled = token_bytes(new_tokenizer)
    special = set(new_tokenizer.all_special_ids)
    report, sources = TransplantReport(), []
    for i in range(new_vocab):
        spelled = new_spelled.get(i)
        if i == new_tokenizer.eos_token_id and teacher_tokenizer.eos_token_id is not None:
            source = [teacher_tokenizer.eos_token_id]
            report.exact += 1
        elif spelled is not None and spelled in teacher_by_bytes:
            source = [teacher_by_bytes[spelled]]
            report.exact += 1
        else:
            source = [] if spelled is None or i in special else _decompose(spelled, teacher_tokenizer, single_bytes)
            if source:
                report.decomposed += 1
            else:
                report.fallback += 1
        sources.append(source)
    return sources, report


def _decompose(spelled: bytes, teacher_tokenizer, single_bytes: dict[int, int]) -> list[int]:
    try:
        ids = teacher_tokenizer(spelled.decode("utf-8"), add_special_tokens=False)["input_ids"]
    except UnicodeDecodeError:  # a piece of a character: the teacher's single-byte tokens, if it has them
        ids = [single_bytes.get(b) for b in spelled]
        return [] if None in ids else ids
    return [] if teacher_tokenizer.unk_token_id in ids else ids


def transplant_rows(weight: torch.Tensor, sources: list[list[int]]) -> torch.Tensor:
    """[len(sources), H] rows: the mean of the teacher rows each source names (all rows for [])."""
    fallback = weight.float().mean(dim=0)
    rows = [weight[ids].float().mean(dim=0) if ids else fallback for ids in sources]
    return torch.stack(rows).to(weight.dtype)
