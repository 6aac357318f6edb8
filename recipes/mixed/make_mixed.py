"""Interleave the two demo tasks' training sets into one file for the students
(distillation and the cross-entropy baseline see both tasks, alternating line by line).

Usage: python recipes/mixed/make_mixed.py   (reads recipes/data/{dates,records}/train.jsonl)
"""

from itertools import chain, zip_longest
from pathlib import Path

data = Path(__file__).resolve().parent.parent / "data"
dates = (data / "dates" / "train.jsonl").read_text().splitlines()
records = (data / "records" / "train.jsonl").read_text().splitlines()
lines = [line for line in chain.from_iterable(zip_longest(dates, records)) if line]
(Path(__file__).parent / "train.jsonl").write_text("\n".join(lines) + "\n")
