"""An offline teacher for a student with another tokenizer (``distill cache-teacher --cross-tokenizer``).

The cache is made for one student tokenizer and one mode: the student's examples are prepared
exactly as ``workbench distill`` prepares them, the teacher runs on its own tokenization of each,
and for every paired target (``pairing``) the cache stores the teacher's top-k ids and
log-probabilities and the log of its remaining mass, plus which student target each row
belongs to (the pairing, so training needs neither the teacher nor its tokenizer). An ``align``
cache also stores the vocabulary map and, per pair, the end of its student span and the teacher's
summed log-probability of its own continuation tokens in the span (``spans``; from the teacher's
whole logits, whatever the top-k). The teacher runs whole on one device or spread over several
(``--device-map``) exactly as for the same-tokenizer cache. Rows are found by the student example's content key, as in
the same-tokenizer cache, whose manifest checks and atomic writing it shares. Training from it
spreads the remaining mass evenly over the ids outside the top-k (``teacher.teacher_logprobs``):
exact when k is the teacher's vocab size.
"""

from __future__ import annotations

import torch

from workbench import atomic
from workbench.checkpoint import file_fingerprint, parse_dtype
from workbench.distill.cache import (TeacherCache, check_out_dir, check_placement, example_key, input_device,
                                     load_cache_teacher, open_teacher, supervised_next_tokens, teacher_topk,
                                     tokenizer_fingerprint, write_cache)
from workbench.distill.cross_tokenizer.data import conversations_by_source, cross_examples
from workbench.distill.cross_tokenizer.objective import check_cross_tokenizers
from workbench.distill.cross_tokenizer.spans import span_logprob
from workbench.distill.cross_tokenizer.vocab_map import vocab_map
from workbench.distill.losses import LossSpec, SparseTeacher
from workbench.errors import ConfigError
from workbench.modeling import pad_token_id


def build_cross_teacher_cache(teacher: str, student: str, data: str, out: str, *, mode: str, top_k: int = 64,
                              val_data: str | None = None, val_split: float = 0.1, max_length: int = 1024,
                              truncation: str = "truncate", seed: int = 0, temperature: float = 1.0,
                              dtype: str = "float16", teacher_dtype: str | None = None,
                              teacher_device: str | None = None, device_map: str | None = None,
                              max_memory: str | None = None, batch_size: int = 8, overwrite: bool = False) -> dict:
    """Write a cross-tokenizer cache for the student checkpoint ``student``; returns its manifest.
    The teacher runs whole on ``teacher_device`` (default cpu) or spread by ``device_map``, as for
    the same-tokenizer cache."""
    from workbench.data import pad_collate, prepare_datasets
    from workbench.distill.config import CROSS_TOKENIZER_MODES
    from workbench.modeling import load_tokenizer
    from workbench.training.objectives import supervised_hidden_states

    if mode not in CROSS_TOKENIZER_MODES:
        raise ConfigError(f"cross_tokenizer must be one of {', '.join(CROSS_TOKENIZER_MODES)}, got {mode!r}")
    teacher_ckpt = open_teacher(teacher, top_k, temperature)
    check_placement(teacher_device, device_map, max_memory)
    check_out_dir(out, overwrite)
    student_tokenizer, teacher_tokenizer = load_tokenizer(student), load_tokenizer(teacher_ckpt.path)
    check_cross_tokenizers(student_tokenizer, teacher_tokenizer, student, teacher_ckpt.path)
    train, val, _ = prepare_datasets(data, student_tokenizer, max_length, val_path=val_data, val_split=val_split,
                                     seed=seed, truncation=truncation)
    rows = cross_examples(train + val, conversations_by_source(data, val_data), student_tokenizer,
                          teacher_tokenizer, max_length)
    pieces, spans, pair_student, span_student_end, keys, first_rows, row = [], [], [], [], [], [], 0
    with atomic.scratch_dir(out) as offload_dir:  # disk offload of a placed teacher, removed after
        model, weight = load_cache_teacher(teacher_ckpt, teacher_dtype, teacher_device, device_map, max_memory,
                                           offload_dir)
        device = input_device(model)
        weight = weight.to(device)
        chunk = LossSpec().chunk_tokens(weight.shape[0])
        for start in range(0, len(rows), batch_size):
            examples = rows[start:start + batch_size]
            batch = pad_collate([e.teacher for e in examples], pad_id=pad_token_id(teacher_tokenizer))
            with torch.no_grad():
                hidden, targets = supervised_hidden_states(model, {k: v.to(device) for k, v in batch.items()})
            hidden, targets = hidden.to(device), targets.to(device)
            index, ends, seen = [], [], 0
            for example in examples:
                index += [seen + t for _, t in example.pairs]
                ends += [seen + t_end for _, t_end in example.span_ends]
                seen += supervised_next_tokens(example.teacher)
                keys.append(example_key(example))
                first_rows.append(row)
                pair_student += [s for s, _ in example.pairs]
                span_student_end += [s_end for s_end, _ in example.span_ends]
                row += len(example.pairs)
            index = torch.tensor(index, device=device)
            pieces.append(teacher_topk(hidden[index], weight, top_k, temperature, chunk))
            spans.append(span_logprob(hidden, weight, targets, index, torch.tensor(ends, device=device),
                                      temperature, chunk).cpu())
    cached = SparseTeacher(*(torch.cat([p[i] for p in pieces]).cpu() for i in range(3)))
    extra = {"pair_student": torch.tensor(pair_student, dtype=torch.int64)}
    if mode == "align":
        extra["map_student"], extra["map_teacher"] = vocab_map(student_tokenizer, teacher_tokenizer)
        extra["span_student_end"] = torch.tensor(span_student_end, dtype=torch.int64)
        extra["span_teacher_logprob"] = torch.cat(spans).float()
    manifest = {
        "format": 1, "cross_tokenizer": mode, "teacher": str(teacher_ckpt.path),
        "teacher_fingerprint": teacher_ckpt.fingerprint(), "data": str(data), "data_fingerprint": file_fingerprint(data),
        "val_data_fingerprint": file_fingerprint(val_data) if val_data else None,
        "tokenizer_fingerprint": tokenizer_fingerprint(student_tokenizer),
        "teacher_tokenizer_fingerprint": tokenizer_fingerprint(teacher_tokenizer),
        "vocab_size": teacher_ckpt.vocab_size, "top_k": top_k, "temperature": temperature, "max_length": max_length, "truncation": truncation,
        "val_split": val_split, "seed": seed, "examples": len(rows),
    }
    return write_cache(out, manifest, cached, keys, first_rows, parse_dtype(dtype), extra=extra)


def check_cross_cache(cache: TeacherCache, mode: str | None) -> None:
    """A cross-tokenizer cache only serves its own mode, and a plain cache no mode; an align
    cache must hold the span merging's rows (caches from before it do not)."""
    made = cache.manifest.get("cross_tokenizer")
    if made != mode:
        raise ConfigError(f"{cache.path}: the cache was made for "
                          f"{'--cross-tokenizer ' + made if made else 'the same tokenizer'}, this run uses "
                          f"{'--cross-tokenizer ' + mode if mode else 'the same tokenizer'}; remake it")
    if mode == "align" and "span_teacher_logprob" not in cache.extra:
        raise ConfigError(f"{cache.path}: the cache holds no span log-probabilities (made before --cross-tokenizer "
                          "align merged multi-token spans); remake it")


def cross_cached_collate(collate, cache: TeacherCache):
    """A collate for student examples (padded or packed rows) that adds the cache's teacher rows of
    their pairs and the pairs as global student target indices (``pair_student``)."""

    starts = sorted(cache.first_row.values()) + [cache.ids.shape[0]]
    stop_of = dict(zip(starts, starts[1:]))

    def collate_cached(rows):
        batch = collate(rows)
        examples = [e for row in rows for e in (row if isinstance(row, list) else [row])]
        index, student_index, student_end, seen = [], [], [], 0
        for example in examples:
            start = cache.first_row.get(example_key(example))
            if start is None:
                raise ConfigError(f"{cache.path}: holds no entry for example {example.source}; remake the cache")
            stop = stop_of[start]
            index += range(start, stop)
            student_index += [seen + s for s in cache.extra["pair_student"][start:stop].tolist()]
            if "span_student_end" in cache.extra:
                student_end += [seen + s for s in cache.extra["span_student_end"][start:stop].tolist()]
            seen += supervised_next_tokens(example)
        index = torch.tensor(index, dtype=torch.long)
        batch.update(cache_ids=cache.ids[index].long(), cache_logprobs=cache.logprobs[index].float(),
                     cache_rest=cache.rest[index].float(), pair_student=torch.tensor(student_index, dtype=torch.long))
        if "span_teacher_logprob" in cache.extra:
            batch.update(pair_student_end=torch.tensor(student_end, dtype=torch.long),
                         cache_span=cache.extra["span_teacher_logprob"][index])
        return batch

    return collate_cached
