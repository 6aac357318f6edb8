"""The distillation objective for the shared training loop, and the checks that make it valid.

The student's and teacher's final hidden states at the supervised positions go through the
chunked loss with their lm_head weights, so the [tokens x vocab] logits never exist whole.
The teacher runs in eval mode without gradients, in its own dtype and on its own device, or,
under --fsdp, sharded over the ranks like the student. Under --fsdp neither lm_head weight is
gathered: the loss computes each rank's logits from the vocabulary shards
(``workbench.distill.heads``).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from workbench.distill.losses import DenseTeacher, LossSpec, SparseTeacher, distill_loss
from workbench.errors import ConfigError
from workbench.training.fsdp import ShardedTeacher
from workbench.training.loop import to_device
from workbench.training.objectives import supervised_hidden_states, unwrap

CACHED_TEACHER_KEYS = ("teacher_ids", "teacher_logprobs", "teacher_rest")


def output_weight(model) -> torch.Tensor:
    """The lm_head weight [vocab, hidden]; heads the chunked loss cannot reproduce are refused."""
    base = unwrap(model)
    head = base.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ConfigError(f"{base.config.model_type}: an lm_head with a bias is not supported for distillation")
    if getattr(base.config, "final_logit_softcapping", None):
        raise ConfigError(f"{base.config.model_type}: final logit softcapping is not supported for distillation")
    return head.weight


def check_same_tokenizer(student_tokenizer, teacher_tokenizer, student_path, teacher_path) -> None:
    """Distillation compares token ids, so both must mean the same tokens (the models' vocab
    sizes may still differ by padding: only shared ids are compared)."""
    student_vocab, teacher_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if student_vocab == teacher_vocab:
        return
    differ = [token for token, i in student_vocab.items() if teacher_vocab.get(token) != i]
    differ += [token for token in teacher_vocab if token not in student_vocab]
    example = differ[0]
    raise ConfigError(
        f"the student ({student_path}) and the teacher ({teacher_path}) use different tokenizers "
        f"({len(student_vocab)} vs {len(teacher_vocab)} tokens, {len(differ)} differ, e.g. {example!r}: "
        f"id {student_vocab.get(example)} vs {teacher_vocab.get(example)}); distillation needs the same tokenizer, "
        "or --cross-tokenizer uld to compare them through the text")


class DistillObjective:
    """``objective(student, batch) -> (loss_sum, supervised, correct, {kd_loss, student_ce,
    teacher_agreement})``, with the teacher online or from the cached rows in the batch."""

    reads_vocab_shards = True  # under --fsdp the loop leaves the student's lm_head as vocab shards

    def __init__(self, spec: LossSpec, teacher: torch.nn.Module | None = None, device: torch.device | None = None):
        self.spec = spec
        self.teacher = teacher
        self.sharded = isinstance(teacher, ShardedTeacher)
        if teacher is not None and not self.sharded:
            teacher.eval().requires_grad_(False)
            self.teacher_device = next(teacher.parameters()).device
            self.teacher_weight = output_weight(teacher).detach().to(device)

    def __call__(self, model, batch: dict):
        hidden, targets = supervised_hidden_states(model, batch)
        with self.teacher_for(batch, hidden.device) as teacher:
            loss, stats = distill_loss(hidden, output_weight(model), teacher, targets, self.spec)
        return loss, stats.tokens, stats.correct, {
            "kd_loss": stats.kd, "student_ce": stats.ce, "teacher_agreement": stats.agree}

    @contextmanager
    def teacher_for(self, batch: dict, device: torch.device):
        """The teacher's side of the loss for this batch, valid inside the block (a sharded
        teacher stays gathered for it: the chunked loss reads its lm_head weight)."""
        if self.teacher is None:
            yield SparseTeacher(*(batch[key] for key in CACHED_TEACHER_KEYS), batch.get("teacher_vocab"))
        elif self.sharded:  # every rank runs its batch through the sharded teacher, gathering layer by layer
            with self.teacher.gathered(batch) as (teacher_hidden, teacher_weight):
                yield DenseTeacher(teacher_hidden, teacher_weight)
        else:
            with torch.no_grad():
                teacher_hidden, _ = supervised_hidden_states(self.teacher, to_device(batch, self.teacher_device))
            yield DenseTeacher(teacher_hidden.to(device), self.teacher_weight)
