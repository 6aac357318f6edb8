"""Reading and validating chat JSONL: every problem reported at once, with file:line."""

import json

import pytest

from workbench.data import Conversation, DataWarning, Message, load_conversations
from workbench.errors import DataError


def write_lines(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def chat(user, answer, **assistant_extra):
    return {"messages": [{"role": "user", "content": user},
                         {"role": "assistant", "content": answer, **assistant_extra}]}


def test_reads_chat_and_prompt_completion_lines(tmp_path):
    lines = [chat(f"q{i}", f"a{i}") for i in range(9)] + [
        {"prompt": "say hi", "completion": "hi"},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "x"},
                      {"role": "assistant", "content": "y", "weight": 0},
                      {"role": "user", "content": "z"}, {"role": "assistant", "content": "w"}]},
    ]
    path = write_lines(tmp_path / "d.jsonl", lines)
    conversations = load_conversations(path)
    assert len(conversations) == 11
    assert conversations[9] == Conversation((Message("user", "say hi"), Message("assistant", "hi")),
                                            f"{path}:10")
    assert [m.weight for m in conversations[10].messages] == [1, 1, 0, 1, 1]
    assert conversations[0].as_dicts() == [{"role": "user", "content": "q0"},
                                           {"role": "assistant", "content": "a0"}]


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [chat("a", "b"), "", "  ", chat("c", "d")] * 5)
    conversations = load_conversations(path)
    assert len(conversations) == 10
    assert conversations[1].source == f"{path}:4"


def test_every_problem_is_reported_at_once_one_line_each(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [
        chat("fine", "fine"),
        "{not json",
        {"text": "no messages"},
        {"messages": [{"role": "asistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"messages": "not a list"},
        {"prompt": "no completion"},
        chat("q", "a", weight=2),
        {"messages": [{"role": "user", "content": "q", "weight": 0}, {"role": "assistant", "content": "a"}]},
        [1, 2],
        {**chat("q", "a"), "prompt": "p", "completion": "c"},
        {**chat("q", "a"), "completion": "c"},
    ])
    with pytest.raises(DataError) as info:
        load_conversations(path)
    lines = str(info.value).splitlines()
    expected = [
        (2, "not valid JSON"),
        (3, "no 'messages' list"),
        (4, "role 'asistant' is not one of system, user, assistant (did you mean 'assistant'?)"),
        (5, "'content' must be a string, got int"),
        (6, "'content' is missing"),
        (7, "no assistant message"),
        (8, "'messages' must be a list"),
        (9, "'completion' is missing"),
        (10, "'weight' must be 0 or 1, got 2"),
        (11, "'weight' is only allowed on assistant messages"),
        (12, "expected a JSON object, got list"),
        (13, "has both 'messages' and 'prompt' and 'completion'; a line is either a chat or"),
        (14, "has both 'messages' and 'completion';"),
    ]
    assert len(lines) == len(expected)
    for line, (number, what) in zip(lines, expected):
        assert line.startswith(f"{path}:{number}: ")
        assert what in line


def test_empty_file_and_missing_file_are_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="empty file"):
        load_conversations(empty)
    with pytest.raises(DataError, match="no such data file"):
        load_conversations(tmp_path / "missing.jsonl")


def test_few_examples_warn(tmp_path):
    path = write_lines(tmp_path / "few.jsonl", [chat("a", "b")] * 3)
    with pytest.warns(DataWarning, match="only 3 examples"):
        assert len(load_conversations(path)) == 3


def test_a_long_list_of_problems_is_cut_with_a_count(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", ["not json"] * 60)
    with pytest.raises(DataError) as info:
        load_conversations(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 51 and lines[-1] == "... and 10 more problems"
