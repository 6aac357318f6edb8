"""Writes the tiny-chain datasets (deterministic): `python recipes/tiny/make_data.py`.

Two toy tasks a tiny model can pick up in a few steps: upper-casing a word and counting
its letters. 32 training and 8 held-out conversations each, plus a mix for distillation.
"""

import json
import random
from pathlib import Path

WORDS = ["cat", "dog", "sun", "tree", "stone", "bird", "fish", "moon", "star", "rain", "wind", "leaf",
         "rock", "lake", "hill", "snow", "fire", "sand", "wave", "cloud", "river", "road", "door", "lamp",
         "book", "pen", "cup", "hat", "box", "key", "ring", "bell", "ship", "farm", "frog", "bear",
         "wolf", "lion", "duck", "goat"]


def upper(word):
    return {"messages": [{"role": "user", "content": f"upper: {word}"},
                         {"role": "assistant", "content": word.upper()}]}


def count(word):
    return {"messages": [{"role": "user", "content": f"count: {word}"},
                         {"role": "assistant", "content": str(len(word))}]}


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


here = Path(__file__).parent
words = WORDS[:]
random.Random(0).shuffle(words)
train, test = words[:32], words[32:]
write(here / "upper-train.jsonl", [upper(w) for w in train])
write(here / "upper-test.jsonl", [upper(w) for w in test])
write(here / "count-train.jsonl", [count(w) for w in train])
write(here / "count-test.jsonl", [count(w) for w in test])
write(here / "mixed-train.jsonl", [f(w) for w in train[:16] for f in (upper, count)])
