#!/usr/bin/env python
"""A student with its own tokenizer for the cross-tokenizer comparison of docs/distill.md.

Trains a byte-level BPE (default 8192 tokens) on the shipped training data (the chat set's
prompts and the teacher's sampled answers, dates, records) plus more of the teacher's own
samples (``--teacher-samples`` answers per chat training prompt, at temperature 1, up to 96 new
tokens: the shipped texts alone hold too few distinct words for 8k merges), with the teacher's
chat template and special tokens, then cuts a student from the teacher with
`student init --tokenizer`. No held-out prompt or answer is seen. scripts/cross_tokenizer_vs_ce.py
runs it and compares the students.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
TRAIN_FILES = [REPO / "recipes" / "data" / name / "train.jsonl" for name in ("chat", "dates", "records")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory for tokenizer/ and student/")
    parser.add_argument("--teacher", default=str(REPO / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--num-layers", type=int, default=10)
    parser.add_argument("--teacher-samples", type=int, default=2, help="sampled answers per chat training prompt")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make_student(Path(args.out), args.teacher, args.vocab_size, args.num_layers, args.teacher_samples,
                       args.seed))


def make_student(out: Path, teacher: str, vocab_size: int = 8192, num_layers: int = 10, samples: int = 2,
                 seed: int = 0) -> str:
    """Writes out/tokenizer and out/student; returns a one-line summary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from workbench.distill.student import init_student
    from workbench.modeling import load_tokenizer

    teacher_tokenizer = load_tokenizer(teacher)
    texts = [m["content"] for path in TRAIN_FILES for line in path.read_text().splitlines() if line.strip()
             for m in json.loads(line)["messages"]]
    prompts = [json.loads(line)["messages"][:1] for line in TRAIN_FILES[0].read_text().splitlines() if line.strip()]
    texts += teacher_samples(teacher, prompts * samples, seed)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None)
    fast.chat_template = teacher_tokenizer.chat_template
    fast.save_pretrained(out / "tokenizer")
    student = init_student(teacher, out / "student", num_layers=num_layers, tokenizer=out / "tokenizer",
                           overwrite=True)
    metrics = student.lineage["metrics"]
    return (f"tokenizer: {len(fast)} tokens from {len(texts)} texts; student {metrics['parameters']:,} parameters; "
            f"rows: {metrics['tokens']}")


def teacher_samples(teacher: str, prompts: list[list[dict]], seed: int, batch_size: int = 32) -> list[str]:
    """The teacher's answers to the prompts, sampled at temperature 1 (up to 96 new tokens)."""
    import torch

    from workbench.modeling import load_model, load_tokenizer
    from workbench.modeling.generation import left_padded, pad_token_id, prompt_ids, sampling_kwargs, stop_token_ids

    model, tokenizer = load_model(teacher), load_tokenizer(teacher)
    pad_id, stop_ids = pad_token_id(tokenizer), stop_token_ids(model, tokenizer)
    torch.manual_seed(seed)
    answers = []
    for start in range(0, len(prompts), batch_size):
        input_ids, attention_mask = left_padded([prompt_ids(tokenizer, p) for p in prompts[start:start + batch_size]],
                                                pad_id)
        with torch.no_grad():
            output = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=96,
                                    pad_token_id=pad_id, eos_token_id=stop_ids, **sampling_kwargs(1.0))
        answers += [tokenizer.decode(row, skip_special_tokens=True).strip() for row in output[:, input_ids.shape[1]:]]
    return answers


if __name__ == "__main__":
    main()
