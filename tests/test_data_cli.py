"""`workbench data check` as a user runs it."""

import json

from tests.cli_helpers import run_workbench


def test_data_check_prints_the_numbers_that_matter(tmp_path, tiny_llama):
    path = tmp_path / "d.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"what is {i}"}, {"role": "assistant", "content": "four"}]}
            for i in range(20)]
    rows += rows[:2] + [{"prompt": "two", "completion": "four " * 40}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_workbench("data", "check", path, "--model", tiny_llama, "--max-length", "32",
                           "--batch-size", "4", "--grad-accum", "2", "--val-split", "0.2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "examples            23" in out
    assert "duplicates          2" in out
    assert "train / validation  17 / 4" in out
    assert "over max length     1 (> 32 tokens, truncated)" in out
    assert "steps per epoch     3 (batch size 4, grad accum 2)" in out  # 17 rows -> 5 batches -> 3 steps
    assert "supervised tokens" in out and "median" in out


def test_data_check_lists_every_problem_and_exits_2(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "q"}]}\nnot json\n')
    result = run_workbench("data", "check", path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {path}:1: no assistant message, so nothing to learn from",
        f"{path}:2: not valid JSON (Expecting value at column 1)",
    ]
