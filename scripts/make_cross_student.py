#!/usr/bin/env python
"""A student with its own tokenizer for the cross-tokenizer comparison of docs/distill.md.

Trains a byte-level BPE (8192 tokens asked) on the shipped training data (the chat set's
prompts and the teacher's own sampled answers, dates, records) with the teacher's chat template
and special tokens, then cuts a student from the teacher with `student init --tokenizer`. No
held-out prompt or answer is seen. The 1,600 training texts hold 3,194 distinct words: the BPE
runs out of merges at 4,819 tokens (every training word is one token by then), below the 8192
asked. (More of the teacher's samples would give more: on this project's shared 2-core machine it
samples about 25 tokens/s, too slow for the tens of thousands of tokens that would take.)
scripts/cross_tokenizer_vs_ce.py runs it and compares the students.
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
    args = parser.parse_args()
    print(make_student(Path(args.out), args.teacher, args.vocab_size, args.num_layers))


def make_student(out: Path, teacher: str, vocab_size: int = 8192, num_layers: int = 10) -> str:
    """Writes out/tokenizer and out/student; returns a one-line summary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from workbench.distill.student import init_student
    from workbench.modeling import load_tokenizer

    teacher_tokenizer = load_tokenizer(teacher)
    texts = [m["content"] for path in TRAIN_FILES for line in path.read_text().splitlines() if line.strip()
             for m in json.loads(line)["messages"]]
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


if __name__ == "__main__":
    main()
