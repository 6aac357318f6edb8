"""A step launched as several processes: ``python -m torch.distributed.run --standalone
--nproc_per_node N -m workbench ARGS --config FILE``, as its kind describes (``Processes``).

The child's output streams to this process's stderr as it comes; a failed launch becomes one
error: the child's own last ``error:`` line. Bad input is said by rank 0 only, and torchrun
stops the other ranks as soon as one exits, so the launcher checks on its ranks every
MONITOR_SECONDS (torchrun's default is 0.1) to leave rank 0 time to say why; were it still
stopped first, the error says how the processes exited. The processes run the same code as
this one: the directory this package was imported from goes first on their PYTHONPATH.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

import workbench
from workbench.errors import WorkbenchError
from workbench.recipe.kinds import Processes

PACKAGE_ROOT = Path(workbench.__file__).resolve().parents[1]
MONITOR_SECONDS = 1
ERROR_LINE = re.compile(r"error(?: \((rank \d+)\))?: (.*)")  # the CLI's `error: ...`, `error (rank 1): ...`


class LaunchFailed(WorkbenchError):
    """The processes of a step exited with an error; the message is the child's error line."""


def run_processes(processes: Processes, out: Path) -> Path:
    """Run ``processes``, which write the step's output ``out``; returns ``out``."""
    with tempfile.TemporaryDirectory(prefix="workbench-launch-") as scratch:
        config_file = Path(scratch) / "config.yaml"
        config_file.write_text(yaml.safe_dump(processes.config, sort_keys=False))
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={processes.nproc}", f"--monitor-interval={MONITOR_SECONDS}",
                "-m", "workbench", *processes.args, "--config", str(config_file)]
        returncode, error = _stream(argv)
    if returncode != 0:
        raise LaunchFailed(error or f"{processes.nproc} processes exited with code {returncode} "
                                    "(the output above says why)")
    return out


def _stream(argv: list[str]) -> tuple[int, str | None]:
    """Run ``argv``, echoing its output (stdout and stderr) to our stderr line by line; its
    exit code and its last ``error:`` line without the prefix."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(PACKAGE_ROOT),
                                                                     os.environ.get("PYTHONPATH"))))}
    last_error = None
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               bufsize=1)
    try:
        for line in process.stdout:
            sys.stderr.write(line)
            sys.stderr.flush()
            error = ERROR_LINE.match(line)
            if error:
                last_error = ": ".join(filter(None, error.groups())).strip()
        return process.wait(), last_error
    finally:
        if process.poll() is None:  # interrupted here: stop the launcher (it stops its workers)
            process.terminate()
            process.wait()
