"""Generate the two small demo tasks in recipes/data/ (deterministic: same seed, same bytes).

- dates:   rewrite a date written in words ("the 5th of March, 2021") as ISO 8601 ("2021-03-05").
- records: pull a person's name, age and city out of a sentence as one line of JSON
           ('{"name": "Ana", "age": 34, "city": "Oslo"}').

Both have one correct answer per prompt, so exact match measures them, and both are mostly
copying plus a fixed format, which a small LoRA learns in minutes while the base model, asked
the same question, answers in its own words. Each prompt names its task, so a merged model
can tell them apart. No prompt occurs in two splits. The test split is larger than the
validation split, for comparisons finer than one validation prompt (2.5 points); it is drawn
last, so adding it left the other splits' bytes as they were.

Usage: python recipes/data/make_datasets.py [--out recipes/data] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

TRAIN_SIZE = 240
VALID_SIZE = 40
TEST_SIZE = 200

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
DATE_STYLES = [
    "{month} {day}, {year}",
    "{day} {month} {year}",
    "the {ordinal} of {month}, {year}",
    "{month} {ordinal}, {year}",
]

NAMES = ["Ana", "Ben", "Chloe", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Keiko",
         "Liam", "Maya", "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Samir", "Tara", "Uma", "Victor",
         "Wen", "Yusuf", "Zoe"]
CITIES = ["Oslo", "Lima", "Paris", "Nairobi", "Toronto", "Madrid", "Berlin", "Lisbon", "Seoul",
          "Dublin", "Austin", "Porto", "Quito", "Vienna", "Kyoto", "Accra", "Denver", "Rome"]
RECORD_STYLES = [
    "{name} is {age} years old and lives in {city}.",
    "Living in {city}, {name} just turned {age}.",
    "{name}, aged {age}, works in {city}.",
    "At {age}, {name} moved to {city}.",
    "My neighbour {name} from {city} is {age}.",
]


def ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def date_example(rng: random.Random) -> tuple[str, str]:
    year, month = rng.randint(1950, 2049), rng.randint(1, 12)
    day = rng.randint(1, DAYS_IN_MONTH[month - 1])
    written = rng.choice(DATE_STYLES).format(month=MONTHS[month - 1], day=day, ordinal=ordinal(day), year=year)
    return f"Convert this date to YYYY-MM-DD: {written}", f"{year:04d}-{month:02d}-{day:02d}"


def record_example(rng: random.Random) -> tuple[str, str]:
    name, age, city = rng.choice(NAMES), rng.randint(18, 90), rng.choice(CITIES)
    sentence = rng.choice(RECORD_STYLES).format(name=name, age=age, city=city)
    answer = json.dumps({"name": name, "age": age, "city": city})
    return f"Extract name, age and city as JSON: {sentence}", answer


TASKS = {"dates": date_example, "records": record_example}


def make_split(make, rng: random.Random, size: int, taken: set[str]) -> list[dict]:
    """``size`` examples whose prompts are not in ``taken`` (which grows)."""
    rows = []
    while len(rows) < size:
        prompt, answer = make(rng)
        if prompt in taken:
            continue
        taken.add(prompt)
        rows.append({"messages": [{"role": "user", "content": prompt},
                                  {"role": "assistant", "content": answer}]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for index, (task, make) in enumerate(TASKS.items()):
        rng = random.Random(args.seed * 1000 + index)
        taken: set[str] = set()
        valid = make_split(make, rng, VALID_SIZE, taken)
        train = make_split(make, rng, TRAIN_SIZE, taken)
        test = make_split(make, rng, TEST_SIZE, taken)
        for split, rows in (("train", train), ("valid", valid), ("test", test)):
            write_jsonl(args.out / task / f"{split}.jsonl", rows)
        print(f"{task}: {len(train)} train, {len(valid)} valid, {len(test)} test -> {args.out / task}")


if __name__ == "__main__":
    main()
