"""A `workbench serve` subprocess on a free loopback port, and a recipe run directory of tiny models."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

from tests.cli_helpers import REPO_ROOT
from tests.tiny_models import make_checkpoint

SERVING_LINE = re.compile(r"serving \d+ model\(s\) on (http://127\.0\.0\.1:\d+/v1)")


def make_run_dir(runs: Path, name: str = "demo") -> Path:
    """runs/NAME/ as the recipe runner leaves it: two finished model steps (expert-a, ties),
    an eval step and their state records."""
    from workbench.recipe.state import StepRecord, write_record

    run_dir = runs / name
    for step_id, kind, seed in (("expert-a", "sft", 0), ("ties", "merge", 1)):
        make_checkpoint(run_dir / step_id, seed=seed)
        write_record(run_dir, StepRecord(step_id, kind, "fp", {}, "done", output=step_id))
    (run_dir / "report").mkdir()
    (run_dir / "report" / "eval.json").write_text("{}")
    write_record(run_dir, StepRecord("report", "eval", "fp", {}, "done", output="report"))
    return run_dir


class Server:
    """`workbench serve ARGS --port 0`; ``base_url`` once it listens. Use as a context manager:
    leaving it sends SIGTERM and waits for the process to end."""

    def __init__(self, *args: str, env: dict | None = None):
        full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "workbench", "serve", *map(str, args), "--host", "127.0.0.1", "--port", "0"],
            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        listening = threading.Event()
        self.base_url = None

        def read():
            for line in self.process.stderr:
                self.lines.append(line)
                match = SERVING_LINE.search(line)
                if match:
                    self.base_url = match.group(1)
                    listening.set()
            listening.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        listening.wait(180)
        if self.base_url is None:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.lines))

    @property
    def root(self) -> str:
        return self.base_url.removesuffix("/v1")

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.reader.join(5)
        return code

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def raw_request(url: str, body: bytes | None = None, headers: dict | None = None,
                method: str | None = None) -> tuple[int, dict]:
    """(status, parsed JSON body) of one HTTP request, errors included."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
