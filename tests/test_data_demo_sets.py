"""The shipped demo datasets are exactly what their seeded generator writes, and valid as training data."""

import importlib.util
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from workbench.data import deduplicate, load_conversations

DATA = Path(__file__).resolve().parent.parent / "recipes" / "data"
TASKS = ("dates", "records")


def test_generator_reproduces_the_shipped_files(tmp_path):
    subprocess.run([sys.executable, str(DATA / "make_datasets.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    for task in TASKS:
        for split in ("train", "valid", "test"):
            assert (tmp_path / task / f"{split}.jsonl").read_bytes() == (DATA / task / f"{split}.jsonl").read_bytes()


def test_shipped_sets_are_valid_unique_and_disjoint():
    for task in TASKS:
        splits = [load_conversations(DATA / task / f"{split}.jsonl") for split in ("train", "valid", "test")]
        assert all(deduplicate(split)[1] == 0 for split in splits)
        prompts = [{c.messages[0].content for c in split} for split in splits]
        assert sum(map(len, prompts)) == len(set().union(*prompts))


def load_chat_generator():
    spec = importlib.util.spec_from_file_location("make_chat", DATA / "make_chat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def template_pattern(template: str) -> re.Pattern:
    literal_parts = re.split(r"\{\w+\}", template)
    return re.compile("(.+)".join(re.escape(part) for part in literal_parts) + r"\Z")


def test_chat_set_prompts_are_the_generators_in_order_balanced_and_disjoint():
    make_chat = load_chat_generator()
    drawn = make_chat.draw_prompts(make_chat.all_prompts(random.Random(0)),
                                   2 * (make_chat.VALID_SIZE + make_chat.TRAIN_SIZE))
    splits = {split: load_conversations(DATA / "chat" / f"{split}.jsonl") for split in ("valid", "train")}
    assert [len(rows) for rows in splits.values()] == [make_chat.VALID_SIZE, make_chat.TRAIN_SIZE]
    shipped = [c.messages[0].content for rows in splits.values() for c in rows]
    assert len(set(shipped)) == len(shipped)
    positions = [drawn.index(prompt) for prompt in shipped]
    assert positions == sorted(positions), "shipped prompts are not in the generator's order"
    patterns = [template_pattern(template) for template, _ in make_chat.TEMPLATES]
    for split, rows in splits.items():
        kinds = [next(i for i, p in enumerate(patterns) if p.match(c.messages[0].content)) for c in rows]
        counts = Counter(kinds)
        assert len(counts) == len(patterns), f"{split}: some templates have no prompt"
        assert max(counts.values()) <= 3 * min(counts.values()), f"{split}: unbalanced {counts}"
        assert all(c.messages[1].content.strip() for c in rows)


def test_chat_set_drawing_deals_templates_round_robin():
    make_chat = load_chat_generator()
    pools = [["a1", "a2", "a3"], ["b1"], ["c1", "c2"]]
    assert make_chat.draw_prompts(pools, 5) == ["a1", "b1", "c1", "a2", "c2"]
    with pytest.raises(ValueError, match="only 6"):
        make_chat.draw_prompts(pools, 7)
