"""Which student and teacher tokens spell the same text.

Token strings are compared as the bytes they stand for: a byte-level BPE's token is mapped back
through GPT-2's byte-to-character table ("Ġhello" is b" hello"), a sentencepiece-style token's
space marker "▁" is a space and its byte-fallback tokens "<0xE2>" single bytes; other
tokenizers' strings are taken as UTF-8. Special tokens map when their text is the same, and the
two end-of-sequence tokens map to each other: each closes an assistant turn in its own template.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

import torch

BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's printable-character stand-in for each byte, inverted."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _decoder_kinds(tokenizer) -> set[str]:
    decoder = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder") or {}
    kinds, stack = set(), [decoder]
    while stack:
        node = stack.pop()
        kinds.add(node.get("type", ""))
        stack += node.get("decoders", [])
    return kinds


def token_bytes(tokenizer) -> dict[int, bytes]:
    """The bytes each id of the tokenizer's vocabulary spells (ids that spell none are left out)."""
    kinds = _decoder_kinds(tokenizer)
    special = set(tokenizer.all_special_tokens) | {t.content for t in tokenizer.added_tokens_decoder.values()}
    table = _byte_level_decoder() if "ByteLevel" in kinds else None
    spelled = {}
    for token, i in tokenizer.get_vocab().items():
        if token in special:
            spelled[i] = token.encode("utf-8")
        elif table is not None:
            if all(c in table for c in token):
                spelled[i] = bytes(table[c] for c in token)
        elif (byte := BYTE_FALLBACK.match(token)) and "ByteFallback" in kinds:
            spelled[i] = bytes([int(byte.group(1), 16)])
        else:
            spelled[i] = token.replace("\u2581", " ").encode("utf-8")
    return spelled


def vocab_map(student_tokenizer, teacher_tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(student ids, teacher ids) of the tokens both vocabularies spell the same, one to one
    (the lowest id wins where one side spells a text twice), in student id order."""
    teacher_by_bytes = {}
    for i, spelled in sorted(token_bytes(teacher_tokenizer).items()):
        teacher_by_bytes.setdefault(spelled, i)
    pairs, used = {}, set()
    for i, spelled in sorted(token_bytes(student_tokenizer).items()):
        j = teacher_by_bytes.get(spelled)
        if j is not None and j not in used:
            pairs[i] = j
            used.add(j)
    s_eos, t_eos = student_tokenizer.eos_token_id, teacher_tokenizer.eos_token_id
    if s_eos is not None and t_eos is not None and s_eos not in pairs and t_eos not in used:
        pairs[s_eos] = t_eos
    ids = sorted(pairs)
    return torch.tensor(ids, dtype=torch.long), torch.tensor([pairs[i] for i in ids], dtype=torch.long)
