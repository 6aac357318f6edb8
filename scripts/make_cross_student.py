#!/usr/bin/env python
"""A student with its own tokenizer for the cross-tokenizer comparison of docs/distill.md.

Trains a byte-level BPE (default 8192 tokens) on the shipped training data (the chat set's
prompts and the teacher's sampled answers, dates, records) with the teacher's chat template
and special tokens, then cuts a student from the teacher with `student init --tokenizer`.
Then compare students with scripts/distill_vs_ce.py, e.g.:

    python scripts/make_cross_student.py --out /tmp/xtok
    python scripts/distill_vs_ce.py --work /tmp/xtok/runs --teacher models/smollm2-135m-instruct \\
        --student /tmp/xtok/student --data recipes/data/chat/train.jsonl \\
        --eval-data recipes/data/chat/valid.jsonl --limit 0 \\
        '{"ce": {"kind": "sft", "lr": 5e-4, "max_steps": 40}, ...}'
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

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from workbench.distill.student import init_student
    from workbench.modeling import load_tokenizer

    teacher_tokenizer = load_tokenizer(args.teacher)
    texts = [m["content"] for path in TRAIN_FILES for line in path.read_text().splitlines() if line.strip()
             for m in json.loads(line)["messages"]]
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=args.vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None)
    fast.chat_template = teacher_tokenizer.chat_template
    out = Path(args.out)
    fast.save_pretrained(out / "tokenizer")
    student = init_student(args.teacher, out / "student", num_layers=args.num_layers,
                           tokenizer=out / "tokenizer", overwrite=True)
    metrics = student.lineage["metrics"]
    print(f"tokenizer: {len(fast)} tokens from {len(texts)} texts; student {metrics['parameters']:,} parameters; "
          f"rows: {metrics['tokens']}")


if __name__ == "__main__":
    main()
