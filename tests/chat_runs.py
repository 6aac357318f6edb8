"""What the training tests share: a small chat set (reverse a word), and a finished run
turned back into what a kill would have left."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

WORDS = ["hello", "cat", "dog", "stone", "abc", "paris", "rome", "four", "two", "fox"]


def write_reversals(path: Path, count: int, offset: int = 0, suffix=lambda i: "") -> Path:
    """``count`` conversations, number ``offset`` onwards: 'reverse the word: WORD I' answered
    by WORD reversed, I and ``suffix(I)``."""
    with open(path, "w") as f:
        for i in range(offset, offset + count):
            word = WORDS[i % len(WORDS)]
            f.write(json.dumps({"messages": [
                {"role": "user", "content": f"reverse the word: {word} {i}"},
                {"role": "assistant", "content": f"{word[::-1]} {i}{suffix(i)}"}]}) + "\n")
    return path


def interrupted_copy(finished: Path, to: Path, lost_checkpoint: str) -> Path:
    """A copy of a finished run as a kill just before it saved ``lost_checkpoint`` leaves it:
    no final model, no such checkpoint."""
    shutil.copytree(finished, to)
    (to / "config.json").unlink()
    shutil.rmtree(to / "checkpoints" / lost_checkpoint)
    return to
