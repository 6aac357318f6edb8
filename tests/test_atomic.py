"""Writes killed at every point leave the old or the new content whole, and the next run cleans
or finishes what they left (``workbench.atomic``); --overwrite replaces only what this tool wrote."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.cli_helpers import REPO_ROOT, run_workbench
from workbench import atomic
from workbench.checkpoint import LINEAGE_FILE, Checkpoint, CheckpointWriter
from workbench.distill.cache import MANIFEST
from workbench.errors import ConfigError
from workbench.training.rundir import RUN_FILE
from workbench.training.state import latest_checkpoint, list_checkpoints
from workbench.training.distributed import Dist


def run_killed(body: str, kill_on: str, nth: int = 1) -> None:
    """Run ``body`` in a fresh Python in which the ``nth`` call of ``kill_on`` (e.g. "os.rename")
    kills the process with SIGKILL: no cleanup handler runs, as with a real kill."""
    module, name = kill_on.rsplit(".", 1)
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        import {module} as target
        real, calls = target.{name}, [0]
        def killer(*args, **kwargs):
            calls[0] += 1
            if calls[0] == {nth}:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        target.{name} = killer
    """) + textwrap.dedent(body)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr


def make_dir(path: Path, text: str) -> Path:
    path.mkdir(parents=True)
    (path / "workbench.json").write_text(json.dumps({"text": text}))
    (path / "data.txt").write_text(text * 1000)
    return path


def content(path: Path) -> str:
    return (path / "data.txt").read_text()


def replace_script(target: Path) -> str:
    return f"""
        from pathlib import Path
        from workbench import atomic
        with atomic.staged_dir(Path({str(target)!r})) as staging:
            (staging / "workbench.json").write_text("{{}}")
            (staging / "data.txt").write_text("new" * 1000)
    """


@pytest.mark.parametrize("kill_on, nth, survivor", [
    ("os.fsync", 1, "old"),         # while the new directory is being flushed
    ("os.rename", 1, "old"),        # before the old one is moved aside
    ("os.rename", 2, "old"),        # old moved aside, new not yet in place: OUT is missing
    ("shutil.rmtree", 1, "new"),    # new in place, old not yet deleted
])
def test_directory_replacement_killed_at_each_point_leaves_one_whole(tmp_path, kill_on, nth, survivor):
    target = make_dir(tmp_path / "out", "old")
    run_killed(replace_script(target), kill_on, nth)
    assert any(p.name.startswith(".out.wb-") for p in tmp_path.iterdir())  # the kill left something
    atomic.recover(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert content(target) == survivor * 1000
    # and the next write succeeds
    subprocess.run([sys.executable, "-c", textwrap.dedent(f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r})")
                    + textwrap.dedent(replace_script(target))], check=True)
    assert content(target) == "new" * 1000 and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_file_write_killed_keeps_the_old_file_and_the_leftover_is_removed(tmp_path):
    path = tmp_path / "best.json"
    atomic.write_json(path, {"step": 1})
    run_killed(f"""
        from workbench import atomic
        atomic.write_json({str(path)!r}, {{"step": 2}})
    """, "os.replace")
    assert json.loads(path.read_text()) == {"step": 1}
    atomic.recover(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json"]


def test_checkpoint_deletion_killed_midway_is_not_listed_and_is_finished_by_resume(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    for step in (1, 2):
        (checkpoints / f"step-{step:07d}").mkdir(parents=True)
        (checkpoints / f"step-{step:07d}" / "state.json").write_text("{}")
        (checkpoints / f"step-{step:07d}" / "trainable.safetensors").write_bytes(b"x" * 100_000)
    run_killed(f"""
        from workbench import atomic
        atomic.remove_dir({str(checkpoints / "step-0000001")!r})
    """, "os.unlink", nth=1)
    assert [p.name for p in list_checkpoints(checkpoints)] == ["step-0000002"]
    assert latest_checkpoint(checkpoints, Dist()).name == "step-0000002"  # a resume cleans up first
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-0000002"]


def test_leftovers_of_a_live_process_are_left_alone(tmp_path):
    target = make_dir(tmp_path / "out", "old")
    with atomic.scratch_dir(target) as scratch:
        atomic.recover(target)
        assert scratch.is_dir()
    assert not scratch.exists()


def test_killed_checkpoint_replacement_is_restored_before_the_exists_check(tmp_path, tiny_llama):
    out = tmp_path / "model"
    run_killed(f"""
        import shutil
        shutil.copytree({str(tiny_llama)!r}, {str(out)!r})
        from tests.tiny_models import make_model
        from workbench.checkpoint import make_lineage, save_model
        save_model(make_model("llama", vocab_size=384, seed=3), {str(out)!r}, lineage=make_lineage("test"),
                   overwrite=True)
    """, "os.rename", nth=2)
    assert not out.exists()
    with pytest.raises(Exception, match="already exists"):
        CheckpointWriter(out, [])  # the old checkpoint was put back, not silently replaced
    assert Checkpoint(out).fingerprint() == Checkpoint(tiny_llama).fingerprint()


def test_output_markers_name_the_files_each_writer_leaves():
    assert {LINEAGE_FILE, RUN_FILE, MANIFEST} == set(atomic.OUTPUT_MARKERS)


def user_folder(path: Path) -> Path:
    path.mkdir()
    (path / "notes.txt").write_text("my notes")
    return path


def test_overwrite_refuses_a_folder_this_tool_did_not_write(tmp_path):
    folder = user_folder(tmp_path / "mine")
    with pytest.raises(ConfigError, match="not a workbench output"):
        CheckpointWriter(folder, [], overwrite=True)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    atomic.check_replaceable(empty)


def test_merge_overwrite_refuses_a_user_folder(tmp_path, tiny_llama):
    folder = user_folder(tmp_path / "out")
    config_file = tmp_path / "merge.yml"
    config_file.write_text(yaml.safe_dump({"merge_method": "linear", "models": [
        {"model": str(tiny_llama), "parameters": {"weight": 0.5}},
        {"model": str(tiny_llama), "parameters": {"weight": 0.5}}]}))
    result = run_workbench("merge", config_file, folder, "--overwrite")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: {folder}: not a workbench output")
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    # a merge output it wrote itself is replaced
    assert run_workbench("merge", config_file, tmp_path / "merged").returncode == 0
    assert run_workbench("merge", config_file, tmp_path / "merged", "--overwrite").returncode == 0
