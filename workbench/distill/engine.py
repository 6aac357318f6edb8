"""Distillation: teacher (online or cached) + student + chat JSONL in, distilled student out.

``run`` checks everything it can before writing anything (config, checkpoints, tokenizers,
teacher cache, data, the output directory), then trains the student with the shared loop and
the chunked distillation objective, and writes OUT as a checkpoint (plus run.json,
events.jsonl, loss.png and checkpoints/, so re-running the same command resumes).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from workbench.checkpoint import Checkpoint, file_fingerprint, make_lineage, parse_dtype
from workbench.console import log
from workbench.distill.cache import TeacherCache, cached_collate, tokenizer_fingerprint
from workbench.distill.config import DistillConfig
from workbench.distill.cross_tokenizer.cache import check_cross_cache, cross_cached_collate
from workbench.distill.cross_tokenizer.data import conversations_by_source, cross_collate, cross_examples
from workbench.distill.cross_tokenizer.objective import CrossTokenizerObjective, check_cross_tokenizers
from workbench.distill.objective import DistillObjective, check_same_tokenizer
from workbench.distill.on_policy import OnPolicyObjective
from workbench.distill.student import LINEAGE_KIND as STUDENT_INIT
from workbench.training.distributed import barrier, setup
from workbench.training.events import plot_loss_curve
from workbench.training.fsdp import ShardedTeacher, check_fsdp_launch, empty_model
from workbench.training.loop import train
from workbench.training.rundir import begin_run, check_run_dir, write_final_model


def run(config: DistillConfig) -> Checkpoint:
    """Distill ``config.teacher`` (or ``config.teacher_cache``) into ``config.student`` on
    ``config.dataset.data``, writing ``config.out``; return the distilled checkpoint."""
    from workbench.data import pack_examples, packed_collate, pad_collate, prepare_datasets
    from workbench.modeling import load_model, load_tokenizer, pad_token_id, stop_token_ids

    config.validate()
    ctx = setup()
    check_fsdp_launch(config.train, ctx)
    val_data = config.dataset.val_data
    student = Checkpoint(config.student)
    teacher = Checkpoint(config.teacher) if config.teacher else None
    tokenizer = load_tokenizer(student.path)
    cache = None
    if config.teacher_cache:
        cache = TeacherCache.open(config.teacher_cache)
        check_cross_cache(cache, config.cross_tokenizer)
        cache.check_matches(
            data_fingerprint=file_fingerprint(config.dataset.data),
            val_data_fingerprint=file_fingerprint(val_data) if val_data else None,
            teacher_fingerprint=teacher.fingerprint() if teacher else None,
            tokenizer_print=tokenizer_fingerprint(tokenizer),
            settings=data_settings(config) | {"temperature": config.temperature})
    elif config.cross_tokenizer:
        teacher_tokenizer = load_tokenizer(teacher.path)
        check_cross_tokenizers(tokenizer, teacher_tokenizer, student.path, teacher.path)
    else:
        check_same_tokenizer(tokenizer, load_tokenizer(teacher.path), student.path, teacher.path)
    teacher_params = teacher.num_parameters if teacher else None
    if teacher_params and student.num_parameters > teacher_params:
        log(f"warning: the student ({student.num_parameters:,} parameters) is larger than the teacher "
              f"({teacher_params:,})", err=True)
    if reverse_kl_from_a_fresh_cut(student, config):
        log("warning: the student is a fresh `student init` cut, confidently wrong where reverse KL has "
              "almost no gradient, so pure reverse KL barely moves it; distill it with --loss forward_kl "
              "(or --alpha below 1) first, then with reverse KL (docs/distill.md, Real result)", err=True)

    out = Path(config.out)
    inputs = {"student": student, "data": config.dataset.data, **({"teacher": teacher} if teacher else {}),
              **({"val_data": val_data} if val_data else {})}
    identity = {**config.run_identity(), "student_fingerprint": student.fingerprint(),
                "teacher_fingerprint": teacher.fingerprint() if teacher else cache.manifest["teacher_fingerprint"],
                "data_fingerprint": file_fingerprint(config.dataset.data),
                "val_data_fingerprint": file_fingerprint(val_data) if val_data else None}
    status = check_run_dir(out, identity, resume=config.train.resume, overwrite=config.train.overwrite)
    if status == "done":
        return Checkpoint(out)

    train_examples, val_examples, stats = prepare_datasets(
        config.dataset.data, tokenizer, config.train.max_length, val_path=val_data,
        val_split=config.dataset.val_split, seed=config.train.seed, truncation=config.dataset.truncation)
    if config.cross_tokenizer and cache is None:
        conversations = conversations_by_source(config.dataset.data, config.dataset.val_data)
        train_examples, val_examples = (cross_examples(examples, conversations, tokenizer, teacher_tokenizer,
                                                       config.train.max_length)
                                        for examples in (train_examples, val_examples))
    pad_id = pad_token_id(tokenizer)
    batch_collate = packed_collate if config.train.packing else pad_collate
    if config.train.packing:
        train_rows = pack_examples(train_examples, config.train.max_length)
        val_rows = pack_examples(val_examples, config.train.max_length)
    else:
        train_rows, val_rows = train_examples, val_examples
    collate = partial(batch_collate, pad_id=pad_id)
    if cache is not None and config.cross_tokenizer:
        collate = cross_cached_collate(collate, cache)
        objective = CrossTokenizerObjective(
            config.cross_tokenizer, None, ctx.device, spec=config.loss_spec, uld_weight=config.uld_weight,
            chunk_size=config.loss_spec.chunk_tokens(max(len(tokenizer), cache.manifest["vocab_size"])), cache=cache)
    elif cache is not None:
        collate = cached_collate(collate, cache)
        objective = DistillObjective(config.loss_spec)
    elif config.cross_tokenizer:
        collate = cross_collate(collate, partial(batch_collate, pad_id=pad_token_id(teacher_tokenizer)))
        teacher_model = load_model(teacher.path, dtype=parse_dtype(config.teacher_dtype),
                                   device=config.teacher_device or str(ctx.device))
        objective = CrossTokenizerObjective(
            config.cross_tokenizer, teacher_model, ctx.device, spec=config.loss_spec, uld_weight=config.uld_weight,
            chunk_size=config.loss_spec.chunk_tokens(max(len(tokenizer), len(teacher_tokenizer))),
            tokenizers=(tokenizer, teacher_tokenizer))
    else:
        if config.train.fsdp:  # each rank reads only its shards of the teacher
            teacher_model = ShardedTeacher(empty_model(teacher.path, parse_dtype(config.teacher_dtype)),
                                           ctx, config.train.precision)
        else:
            teacher_model = load_model(teacher.path, dtype=parse_dtype(config.teacher_dtype),
                                       device=config.teacher_device or str(ctx.device))
        objective = DistillObjective(config.loss_spec, teacher_model, device=ctx.device)

    torch.manual_seed(config.train.seed)
    if config.train.fsdp:
        model = empty_model(student.path, torch.float32)
    else:
        model = load_model(student.path, dtype=torch.float32)
    eval_objective = objective
    if config.on_policy:
        objective = OnPolicyObjective(
            objective, fraction=config.on_policy, max_new_tokens=config.max_new_tokens,
            temperature=config.sample_temperature, max_length=config.train.max_length, pad_id=pad_id,
            eos_ids=stop_token_ids(model, tokenizer))
    begin_run(out, identity, status, ctx, fsdp=config.train.fsdp, overwrite=config.train.overwrite)
    result = train(model, train_rows, val_rows, collate, config.train, out, ctx, objective, eval_objective)
    lineage = None
    if ctx.is_main:
        plot_loss_curve(out)
        lineage = make_lineage("distill", parameters=config.run_identity(), inputs=inputs,
                               metrics={**result.metrics, "data": stats.to_dict()})
    write_final_model(model, out, student, lineage, ctx)
    barrier(ctx)
    return Checkpoint(out)


def data_settings(config) -> dict:
    """The settings that decide which tokenized examples the data pipeline produces."""
    return {"max_length": config.train.max_length, "truncation": config.dataset.truncation,
            "val_split": config.dataset.val_split, "seed": config.train.seed}


def reverse_kl_from_a_fresh_cut(student: Checkpoint, config: DistillConfig) -> bool:
    """Pure reverse KL on an untrained cut: its gradient q_j (log q_j - log p_j - KL) vanishes
    where the student is one-hot on a token the teacher rules out, which a fresh cut mostly is
    (--cross-tokenizer uld computes no KL, so it is never that)."""
    spec = config.loss_spec
    return (config.cross_tokenizer != "uld" and spec.divergence == "reverse_kl" and spec.alpha == 1
            and (student.lineage or {}).get("kind") == STUDENT_INIT)
