"""Every write the workbench makes to disk, made so that a kill at any instant leaves either
the old content or the new one, never a half of either, and leftovers the next run clears.

Files are written to a hidden sibling, fsynced, renamed over the target, and the directory is
fsynced. Directories are built in a hidden staging sibling and renamed into place; an existing
one is first renamed aside, then the new one renamed in, then the old one deleted. Deleting a
directory renames it to a hidden name first, so a half-deleted directory never keeps its name.

Every hidden name is ``.TARGET.wb-KIND-PID-RANDOM`` with KIND one of:

- ``staging``: a directory or file being written (complete or not): removed;
- ``old``: the previous TARGET moved aside by a replacement: removed if TARGET exists, else
  renamed back to TARGET (the kill came between the two renames; the old one is complete);
- ``trash``: a directory being deleted: removed.

``recover(target)`` applies these rules to the leftovers of processes that are no longer
alive; every writer calls it before writing, so the next run cleans or finishes what a killed
one left.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from workbench.errors import ConfigError

STAGING, OLD, TRASH = "staging", "old", "trash"
_LEFTOVER = re.compile(r"^\.(?P<target>.+)\.wb-(?P<kind>staging|old|trash)-(?P<pid>\d+)-[0-9a-f]+$")
# Files whose presence says a directory was written by the workbench (a checkpoint's lineage,
# a training run's identity, a teacher cache's manifest): only such directories are replaced.
OUTPUT_MARKERS = ("workbench.json", "run.json", "teacher_cache.json")


def hidden_sibling(target: str | os.PathLike, kind: str) -> Path:
    """A fresh hidden name beside ``target`` that ``recover`` knows how to handle."""
    target = Path(target)
    return target.parent / f".{target.name}.wb-{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    """Flush every file under ``path`` and every directory entry to disk."""
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(root)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = hidden_sibling(path, STAGING)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def new_staging_dir(target: str | os.PathLike) -> Path:
    """An empty hidden directory beside ``target`` (whose leftovers are cleared first)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    staging = hidden_sibling(target, STAGING)
    staging.mkdir()
    return staging


def commit_dir(staging: Path, target: str | os.PathLike) -> None:
    """Flush ``staging`` and rename it to ``target``, replacing an existing ``target`` so that a
    kill at any point leaves one of the two complete (see ``recover``)."""
    target = Path(target)
    fsync_tree(staging)
    if target.exists():
        old = hidden_sibling(target, OLD)
        os.rename(target, old)
        os.rename(staging, target)
        fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, target)
    fsync_dir(target.parent)


@contextmanager
def staged_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Build a directory in a staging sibling; on success it replaces ``target``, on an
    exception it is removed."""
    staging = new_staging_dir(target)
    try:
        yield staging
        commit_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextmanager
def scratch_dir(target: str | os.PathLike) -> Iterator[Path]:
    """A hidden working directory beside ``target`` for intermediate files (a merged adapter,
    mergekit's output), removed afterwards, or by ``recover`` if the process was killed."""
    scratch = new_staging_dir(target)
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def move_files_into(staging: Path, target_dir: Path, *, last: str) -> None:
    """Move every file of ``staging`` into the existing ``target_dir`` (``last`` moved last, so
    its presence says the rest is there), then remove the emptied staging directory."""
    fsync_tree(staging)
    for path in sorted(staging.iterdir(), key=lambda p: p.name == last):
        os.replace(path, target_dir / path.name)
    fsync_dir(target_dir)
    staging.rmdir()
    fsync_dir(staging.parent)


def remove_dir(path: str | os.PathLike) -> None:
    """Delete a directory: renamed to a trash name first, so a kill mid-way leaves nothing
    under the old name, and ``recover`` finishes the deletion."""
    path = Path(path)
    if not path.exists():
        return
    trash = hidden_sibling(path, TRASH)
    os.rename(path, trash)
    fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def recover(target: str | os.PathLike | None = None, *, parent: str | os.PathLike | None = None) -> None:
    """Finish or clean what killed writers left for ``target`` (or for every target in ``parent``)."""
    if target is not None:
        parent, only = Path(target).parent, Path(target).name
    else:
        parent, only = Path(parent), None
    if not parent.is_dir():
        return
    for entry in sorted(parent.iterdir()):
        match = _LEFTOVER.match(entry.name)
        if not match or (only is not None and match["target"] != only) or _alive(int(match["pid"])):
            continue
        original = parent / match["target"]
        if match["kind"] == OLD and not original.exists():
            os.rename(entry, original)
            fsync_dir(parent)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def check_replaceable(path: str | os.PathLike) -> None:
    """Refuse to replace a directory the workbench did not write: one that is neither empty nor
    holds one of ``OUTPUT_MARKERS``. A user's folder must never be deleted by --overwrite."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir() or path.is_symlink():
        raise ConfigError(f"{path}: exists and is not a directory the workbench wrote; refusing to replace it")
    if any(path.iterdir()) and not any((path / marker).is_file() for marker in OUTPUT_MARKERS):
        raise ConfigError(f"{path}: not a workbench output (no {' or '.join(OUTPUT_MARKERS)}); refusing to "
                          "overwrite it, choose another output directory or empty it yourself")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
