"""click's own usage errors said as every other error: one `error:` line naming the option, exit 2."""

import pytest

from tests.cli_helpers import run_workbench
from workbench.cli import main


def error_line(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_usage_errors_are_one_line_naming_the_option(capsys, tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_text("")
    cases = [
        (["inspect"], "error: Missing argument 'CHECKPOINT' (see 'workbench inspect --help')"),
        (["eval", "ckpt"], "error: Missing option '--data' (see 'workbench eval --help')"),
        (["eval", "ckpt", "--data", "d.jsonl", "--match", "fuzzy"],
         "error: Invalid value for '--match': 'fuzzy' is not one of 'exact', 'contains', 'regex' "
         "(see 'workbench eval --help')"),
        (["eval", "ckpt", "--data", "d.jsonl", "--out", a_file],
         f"error: Invalid value for '--out': Directory '{a_file}' is a file (see 'workbench eval --help')"),
        (["import", "gguf", "model.gguf", a_file],
         f"error: Invalid value for 'OUT_DIR': Directory '{a_file}' is a file (see 'workbench import gguf --help')"),
        (["sft", "--batch-size", "many"],
         "error: Invalid value for '--batch-size': 'many' is not a valid integer (see 'workbench sft --help')"),
        (["sft", "--lrr", "1"], "error: No such option '--lrr'. (Did you mean one of: '--lora-rank', '--lr'?) "
                                "(see 'workbench sft --help')"),
        (["trian"], "error: No such command 'trian' (see 'workbench --help')"),
    ]
    for args, expected in cases:
        assert error_line(capsys, *args) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_help_is_unchanged(capsys):
    main(["eval", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("Usage: workbench eval [OPTIONS] CHECKPOINTS...")
    assert "--match [exact|contains|regex]" in out


def test_a_group_without_its_command_prints_its_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["import"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("Usage: workbench import [OPTIONS] COMMAND [ARGS]...") and "gguf" in err


def test_a_real_subprocess_gets_one_line():
    result = run_workbench("generate", "ckpt")
    assert result.returncode == 2
    assert result.stderr == "error: Missing option '--prompt' / '-p' (see 'workbench generate --help')\n"
