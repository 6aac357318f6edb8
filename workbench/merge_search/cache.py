"""Finished trials, cached by fingerprint: one JSON file per trial in the trials directory.

A trial's fingerprint hashes everything its measurements depend on: the merge config with the
trial's values, each input checkpoint's content fingerprint, each objective term's data file
(content), metric and reference checkpoint, and the evaluation settings. Not the term weights
(the combined objective is recomputed from them) nor the trial's number: the same merge
measured the same way is the same trial, whichever search asks for it.

Each file is written whole or not at all (``workbench.atomic``: temp file, fsync, rename), so a
search killed at any instant leaves only finished trials; the next run answers them from here.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from workbench import atomic

CACHE_VERSION = 1


def trial_key(config: dict, input_fingerprints: dict[str, str], measurement: dict) -> str:
    """The fingerprint of one trial (see the module docstring)."""
    payload = {"version": CACHE_VERSION, "config": config, "inputs": input_fingerprints,
               "measurement": measurement}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class TrialCache:
    """Measurements of finished trials by fingerprint, in ``directory``."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        atomic.recover(parent=self.directory)  # a killed search's half-written trial file

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> dict | None:
        """The record stored for ``key``, or None. A file that does not parse is treated as
        absent (and replaced when the trial is measured again)."""
        try:
            return json.loads(self._path(key).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put(self, key: str, record: dict) -> None:
        atomic.write_json(self._path(key), record, indent=1)
