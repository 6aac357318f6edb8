"""The cross-tokenizer distillation objective for the shared training loop, and its checks."""

from __future__ import annotations

import torch

from workbench.distill.cross_tokenizer.align import align_loss
from workbench.distill.cross_tokenizer.data import teacher_view
from workbench.distill.cross_tokenizer.pairing import require_offsets
from workbench.distill.cross_tokenizer.spans import Spans, span_logprob
from workbench.distill.cross_tokenizer.teacher import CachedRows, OnlineRows
from workbench.distill.cross_tokenizer.uld import uld_loss
from workbench.distill.cross_tokenizer.vocab_map import vocab_map
from workbench.distill.losses import LossSpec
from workbench.distill.objective import output_weight
from workbench.errors import ConfigError
from workbench.training.loop import to_device
from workbench.training.objectives import supervised_hidden_states


def check_cross_tokenizers(student_tokenizer, teacher_tokenizer, student_path, teacher_path) -> None:
    """--cross-tokenizer is for two different tokenizers that both give character offsets."""
    if student_tokenizer.get_vocab() == teacher_tokenizer.get_vocab():
        raise ConfigError(f"the student ({student_path}) and the teacher ({teacher_path}) use the same tokenizer: "
                          "--cross-tokenizer is not needed (drop it to distill with the plain loss)")
    require_offsets(student_tokenizer, student_path)
    require_offsets(teacher_tokenizer, teacher_path)


def cached_rows(batch: dict, vocab: int) -> CachedRows:
    """The cached teacher rows a ``cross_cached_collate`` batch carries."""
    return CachedRows(batch["cache_ids"], batch["cache_logprobs"], batch["cache_rest"], vocab)


class CrossTokenizerObjective:
    """``objective(student, batch) -> (loss_sum, supervised, correct, {...})`` on cross-tokenizer
    batches (``cross_collate``): the teacher runs on its own tokens, and its hidden states at the
    paired targets meet the student's in ``uld_loss`` (mode uld) or ``align_loss`` (mode align,
    which needs both tokenizers for the vocabulary map, and merges multi-token spans with the
    teacher's log-probabilities of its continuation tokens); with ``cache`` instead of a teacher,
    the rows come from the batch (``cross_cached_collate``)."""

    def __init__(self, mode: str, teacher: torch.nn.Module | None, device: torch.device, *, spec: LossSpec,
                 uld_weight: float, chunk_size: int, tokenizers: tuple | None = None, cache=None):
        self.mode, self.spec, self.uld_weight, self.chunk_size = mode, spec, uld_weight, chunk_size
        self.teacher, self.cache = teacher, cache
        if teacher is not None:
            teacher.eval().requires_grad_(False)
            self.teacher_device = next(teacher.parameters()).device
            self.teacher_weight = output_weight(teacher).detach().to(device)
        if mode == "align":
            mapped = (cache.extra["map_student"], cache.extra["map_teacher"]) if cache else vocab_map(*tokenizers)
            self.vocab_map = tuple(ids.to(device) for ids in mapped)

    def __call__(self, model, batch: dict):
        hidden, targets = supervised_hidden_states(model, batch)
        pair_student = batch["pair_student"].to(hidden.device)
        if self.teacher is None:
            teacher = cached_rows(batch, self.cache.manifest["vocab_size"])
            teacher_span = batch.get("cache_span")
        else:
            with torch.no_grad():
                teacher_batch = to_device(teacher_view(batch), self.teacher_device)
                teacher_hidden, teacher_targets = supervised_hidden_states(self.teacher, teacher_batch)
                teacher_hidden, teacher_targets = teacher_hidden.to(hidden.device), teacher_targets.to(hidden.device)
                pair_teacher = batch["pair_teacher"].to(hidden.device)
                teacher_span = span_logprob(teacher_hidden, self.teacher_weight, teacher_targets, pair_teacher,
                                            batch["pair_teacher_end"].to(hidden.device), self.spec.temperature,
                                            self.chunk_size) if self.mode == "align" else None
            teacher = OnlineRows(teacher_hidden.index_select(0, pair_teacher), self.teacher_weight)
        args = (hidden, output_weight(model), targets, teacher, pair_student)
        if self.mode == "uld":
            loss, stats = uld_loss(*args, weight=self.uld_weight, temperature=self.spec.temperature,
                                   chunk_size=self.chunk_size)
            return loss, stats.tokens, stats.correct, {"kd_loss": stats.kd, "student_ce": stats.ce,
                                                       "paired": stats.pairs}
        spans = Spans(batch["pair_student_end"].to(hidden.device), teacher_span)
        loss, stats = align_loss(*args, *self.vocab_map, self.spec, self.uld_weight, self.chunk_size, spans)
        return loss, stats.tokens, stats.correct, {"kd_loss": stats.kd, "unmapped_uld": stats.uld,
                                                   "student_ce": stats.ce, "teacher_agreement": stats.agree,
                                                   "paired": stats.pairs}
