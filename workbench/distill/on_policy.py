"""On-policy distillation (GKD, Agarwal et al. 2024; TRL's ``lmbda``): train on the student's own answers.

With probability ``fraction`` per batch, each example's last assistant answer is replaced by one
the student samples from the same prompt; the teacher then scores that answer token by token and
the divergence is taken on it. A student trained only on reference answers never sees its own
mistakes at training time, yet at generation time it continues from them (exposure bias); on its
own samples the teacher shows it how to go on from where it actually is, which is where reverse
KL's mode seeking is known to pay off (MiniLLM, GKD).

The coin and the samples come from torch's global generator, which training checkpoints save and
restore, so a resumed run draws exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import torch

from workbench.data import IGNORE_INDEX, pad_collate
from workbench.data.tokenize import TokenizedExample
from workbench.modeling import left_padded, sampling_kwargs
from workbench.training.objectives import unwrap


class OnPolicyObjective:
    """Wraps an ``objective(model, batch)``: some batches get the student's own answers first."""

    def __init__(self, objective, *, fraction: float, max_new_tokens: int, temperature: float,
                 max_length: int, pad_id: int, eos_ids: list[int] | set[int]):
        self.objective = objective
        self.fraction = fraction
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.max_length = max_length
        self.pad_id = pad_id
        self.eos_ids = eos_ids

    def __call__(self, model, batch: dict):
        if torch.rand(()).item() < self.fraction:
            batch = self.with_student_answers(model, batch)
        return self.objective(model, batch)

    @torch.no_grad()
    def with_student_answers(self, model, batch: dict) -> dict:
        """The batch with every row's last answer replaced by the student's sample (only it supervised)."""
        prompts = [row[:answer_start(labels)].tolist() for row, labels in
                   zip(batch["input_ids"], batch["labels"])]
        answers = self.sample(unwrap(model), prompts, batch["input_ids"].device)
        examples = [TokenizedExample(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer)
                    for prompt, answer in zip(prompts, answers)]
        return {key: value.to(batch["input_ids"].device) for key, value in
                pad_collate(examples, self.pad_id).items()}

    def sample(self, model, prompts: list[list[int]], device: torch.device) -> list[list[int]]:
        """One answer per prompt (left-padded batch), cut after its first end-of-sequence token;
        at most ``max_new_tokens`` and never past ``max_length`` tokens with its prompt."""
        ids, mask = left_padded(prompts, self.pad_id)
        width = ids.shape[1]
        new_tokens = min(self.max_new_tokens, self.max_length - min(len(p) for p in prompts))
        was_training = model.training
        model.eval()
        try:
            output = model.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=new_tokens,
                                    pad_token_id=self.pad_id, eos_token_id=sorted(self.eos_ids),
                                    **sampling_kwargs(self.temperature))
        finally:
            model.train(was_training)
        answers = []
        for prompt, generated in zip(prompts, output[:, width:].tolist()):
            answer = generated[:self.max_length - len(prompt)]
            end = next((i for i, token in enumerate(answer) if token in self.eos_ids), None)
            answers.append(answer if end is None else answer[:end + 1])
        return answers


def answer_start(labels: torch.Tensor) -> int:
    """Where a row's last supervised span (its last assistant answer) begins."""
    supervised = (labels != IGNORE_INDEX).tolist()
    start = max(i for i, is_supervised in enumerate(supervised) if is_supervised)
    while start > 0 and supervised[start - 1]:
        start -= 1
    return start

