"""`workbench chat`: streamed answers equal to `workbench generate`, /system and /reset."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.cli_helpers import REPO_ROOT


def chat(checkpoint, lines: list[str], *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "workbench", "chat", str(checkpoint), *args],
                          input="".join(line + "\n" for line in lines), env=env, capture_output=True,
                          text=True, timeout=300)


def test_chat_answers_like_generate_and_follows_system_and_reset(tiny_qwen2):
    from workbench.modeling import generate_text
    from workbench.modeling import load_model, load_tokenizer

    model, tokenizer = load_model(tiny_qwen2), load_tokenizer(tiny_qwen2)
    plain = generate_text(model, tokenizer, "capital of france", max_new_tokens=8)
    with_system = generate_text(model, tokenizer, "capital of france", max_new_tokens=8, system="be brief")
    assert plain != with_system
    lines = ["capital of france", "/system be brief", "capital of france", "/reset", "/oops", "/exit"]
    result = chat(tiny_qwen2, lines, "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr
    answers = [part.strip() for part in result.stdout.split("you> ")[1:-1]]
    assert answers == [plain, "", with_system, "", ""]  # commands print nothing on stdout
    assert "(system message set; conversation reset)" in result.stderr
    assert "unknown command /oops" in result.stderr


def test_chat_refuses_bad_sampling_flags_in_one_line(tiny_llama):
    result = chat(tiny_llama, [], "--temperature", "-1")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --temperature must be >= 0, got -1.0"
