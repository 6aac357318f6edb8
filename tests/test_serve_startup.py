"""`workbench serve` refuses bad start-up input in one line (exit 2), and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import threading
import urllib.request

import pytest

from tests.cli_helpers import run_workbench
from tests.serve_helpers import Server, make_run_dir
from tests.tiny_models import make_checkpoint


def refused(*args, **kwargs) -> str:
    result = run_workbench("serve", *args, timeout=120, **kwargs)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_a_path_that_is_no_checkpoint_nor_run_dir_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "not a checkpoint (no config.json) nor a recipe run directory" in refused(tmp_path / "empty")
    assert "does not exist" in refused(tmp_path / "missing")


def test_two_models_with_one_name_are_refused(tmp_path, tiny_llama):
    run_dir = make_run_dir(tmp_path / "runs")
    make_checkpoint(tmp_path / "elsewhere" / "ties", seed=3)
    line = refused(run_dir, tmp_path / "elsewhere" / "ties")
    assert "two models named 'ties'" in line


def test_pickle_only_checkpoint_is_refused(tmp_path):
    ckpt = tmp_path / "pickled"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (ckpt / "pytorch_model.bin").write_bytes(b"\x80")
    assert "pickle weights" in refused(ckpt)


def test_a_port_in_use_is_refused(tiny_llama):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        line = refused(tiny_llama, "--port", port)
    assert f"cannot listen on 127.0.0.1:{port}: already in use" in line


def test_all_interfaces_without_api_key_are_refused_unless_insecure(tiny_llama):
    line = refused(tiny_llama, "--host", "0.0.0.0", env={"WORKBENCH_API_KEY": ""})
    assert "--host 0.0.0.0 accepts connections from other machines" in line


@pytest.mark.parametrize("option, value, accepted", [
    ("--max-tokens", "0", "x>=1"), ("--max-queue", "-1", "x>=0"), ("--idle-unload", "0", "x>0"),
    ("--shutdown-timeout", "-1", "x>=0")])
def test_a_limit_out_of_its_range_is_refused_naming_the_option_and_its_range(tiny_llama, option, value, accepted):
    line = refused(tiny_llama, option, value)
    assert f"'{option}'" in line and f"not in the range {accepted}" in line


def test_sigterm_lets_the_answer_in_flight_finish_and_exits_0(tiny_llama):
    server = Server(tiny_llama, "--max-tokens", "200")
    body = json.dumps({"model": "llama", "prompt": "the quick brown fox", "max_tokens": 200,
                       "temperature": 0, "stream": True}).encode()
    request = urllib.request.Request(server.base_url + "/completions", body, {"Content-Type": "application/json"})
    events = []
    first = threading.Event()

    def stream():
        with urllib.request.urlopen(request, timeout=120) as response:
            for line in response:
                if line.startswith(b"data: "):
                    events.append(line[6:].strip())
                    first.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert first.wait(120)
    server.process.send_signal(signal.SIGTERM)
    reader.join(120)
    assert server.stop() == 0, "".join(server.lines)
    assert events[-1] == b"[DONE]"
    final = json.loads(events[-2])
    assert final["choices"][0]["finish_reason"] == "length"
    assert final["usage"]["completion_tokens"] == 200
    assert "Traceback" not in "".join(server.lines)
    assert server.lines[-1].strip() == "server stopped"


def test_requests_beyond_running_and_queue_get_429_and_the_rest_finish(tiny_llama):
    import asyncio

    import openai

    async def burst(base_url):
        client = openai.AsyncOpenAI(api_key="none", base_url=base_url, max_retries=0)
        calls = [client.completions.create(model="llama", prompt="the quick brown fox", max_tokens=150,
                                           temperature=0) for _ in range(6)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        await client.close()
        return results

    with Server(tiny_llama, "--max-concurrent", "1", "--max-queue", "1") as server:
        results = asyncio.run(burst(server.base_url))
        answered = [r for r in results if not isinstance(r, Exception)]
        refused = [r for r in results if isinstance(r, openai.RateLimitError)]
        assert len(answered) == 2 and len(refused) == 4, results
        assert all(r.usage.completion_tokens == 150 for r in answered)
        assert refused[0].body["code"] == "rate_limit_exceeded"
        again = asyncio.run(burst(server.base_url))
        assert sum(not isinstance(r, Exception) for r in again) == 2
