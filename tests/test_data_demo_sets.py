"""The shipped demo datasets are exactly what their seeded generator writes, and valid as training data."""

import subprocess
import sys
from pathlib import Path

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
