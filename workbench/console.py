"""Rank-aware output: under torchrun every process runs the same command, and only rank 0
(RANK unset or "0") speaks, so a line appears once however many processes train.

An error is the exception: besides the line rank 0 prints, every rank that fails records its
error in the reply file torchrun gives it (``TORCHELASTIC_ERROR_FILE``, in torch's JSON
format), before it exits. torchrun stops the other ranks as soon as one exits, so rank 0 may be
stopped before it prints; the reply file of the rank that exited first is written by then.
torchrun shows it in its failure summary, and a launcher that gave torchrun ``--log-dir``
reads them all back (``recorded_errors``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click

from workbench.atomic import write_json

ERROR_FILE_VARIABLE = "TORCHELASTIC_ERROR_FILE"


def rank() -> int:
    """This process's rank under torchrun (0 without it)."""
    return int(os.environ.get("RANK", "0"))


def is_rank_zero() -> bool:
    return rank() == 0


def log(message: str, *, err: bool = False) -> None:
    """Print ``message`` (to stderr with ``err``) on rank 0 only."""
    if is_rank_zero():
        click.echo(message, err=err)


def record_error(message: str) -> None:
    """Under torchrun, write this rank's one-line error to its reply file (see the module's
    docstring); atomically, so a rank stopped while writing leaves no half of a file."""
    path = os.environ.get(ERROR_FILE_VARIABLE)
    if path:
        write_json(path, {"message": {"message": message,
                                      "extraInfo": {"timestamp": str(int(time.time())), "rank": rank()}}})


def recorded_errors(log_dir: Path) -> dict[int, str]:
    """rank -> error line, from the reply files of a torchrun run given ``--log-dir log_dir``
    (``log_dir/<run>/attempt_<n>/<local rank>/error.json``); a file that is not one of ours
    (written by torch for an uncaught exception) is left out."""
    errors = {}
    for path in sorted(Path(log_dir).rglob("error.json")):
        try:
            message = json.loads(path.read_text())["message"]
            errors[int(message["extraInfo"]["rank"])] = str(message["message"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return errors
