"""A step launched as several processes: ``python -m torch.distributed.run --standalone
--nproc_per_node N --log-dir DIR -m workbench ARGS --config FILE``, as its kind describes
(``Processes``).

The child's output streams to this process's stderr as it comes. A failed launch becomes one
error, read from the reply files every failing rank writes under DIR before it exits
(``console.record_error``), not from the output: bad input is printed by rank 0 only, and
torchrun stops the other ranks as soon as one exits, so rank 0 may be stopped before it prints.
The processes run the same code as this one: the directory this package was imported from goes
first on their PYTHONPATH.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

import workbench
from workbench.console import recorded_errors
from workbench.errors import WorkbenchError
from workbench.recipe.kinds import Processes

PACKAGE_ROOT = Path(workbench.__file__).resolve().parents[1]


class LaunchFailed(WorkbenchError):
    """The processes of a step exited with an error; the message is the processes' own error."""


def run_processes(processes: Processes, out: Path) -> Path:
    """Run ``processes``, which write the step's output ``out``; returns ``out``."""
    with tempfile.TemporaryDirectory(prefix="workbench-launch-") as scratch:
        config_file, log_dir = Path(scratch) / "config.yaml", Path(scratch) / "logs"
        config_file.write_text(yaml.safe_dump(processes.config, sort_keys=False))
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={processes.nproc}", f"--log-dir={log_dir}",
                "-m", "workbench", *processes.args, "--config", str(config_file)]
        returncode = _stream(argv)
        if returncode != 0:
            raise LaunchFailed(launch_error(recorded_errors(log_dir)) or
                               f"{processes.nproc} processes exited with code {returncode} "
                               "(the output above says why)")
    return out


def launch_error(errors: dict[int, str]) -> str | None:
    """One line for the errors the ranks recorded (rank -> message): the message when they all
    said the same (bad input is found alike on every rank), else the lowest rank's, named."""
    if not errors:
        return None
    first = min(errors)
    if len(set(errors.values())) == 1:
        return errors[first]
    return f"rank {first}: {errors[first]}"


def _stream(argv: list[str]) -> int:
    """Run ``argv``, echoing its output (stdout and stderr) to our stderr line by line; its
    exit code."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(PACKAGE_ROOT),
                                                                     os.environ.get("PYTHONPATH"))))}
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               bufsize=1)
    try:
        for line in process.stdout:
            sys.stderr.write(line)
            sys.stderr.flush()
        return process.wait()
    finally:
        if process.poll() is None:  # interrupted here: stop the launcher (it stops its workers)
            process.terminate()
            process.wait()
