"""`.ci/check-paths`: CI fails when a tracked file names one machine's absolute path."""

import shutil
import subprocess

from tests.cli_helpers import REPO_ROOT

SCRIPT = REPO_ROOT / ".ci" / "check-paths"
# Spelled in pieces so that this file does not trip the check it tests.
DEV_MACHINE = "/".join(["", "work", "main"])


def git_repo(path, files: dict[str, str]):
    """A git checkout at ``path`` with ``files`` staged (tracked) and the check script in .ci/."""
    path.mkdir()
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    (path / ".ci").mkdir()
    shutil.copy(SCRIPT, path / ".ci" / "check-paths")
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    subprocess.run(["git", "-C", str(path), "add", "."], check=True)
    return path


def check(path):
    return subprocess.run([str(path / ".ci" / "check-paths")], capture_output=True, text=True)


def test_files_naming_an_absolute_path_are_listed_and_fail(tmp_path):
    repo = tmp_path / "clone"
    repo = git_repo(repo, {
        "README.md": "run scripts/test from the repository root\n",
        "scripts/bench.py": f'MODEL = "{DEV_MACHINE}/models/smollm2-135m-instruct"\n',
        "tests/test_x.py": f'DATA = "{repo}/recipes/data"\n',
        "recipes/data/log.jsonl": f'{{"path": "{DEV_MACHINE}/runs"}}\n',
    })
    (repo / "untracked.py").write_text(f'"{DEV_MACHINE}"\n')
    result = check(repo)
    assert result.returncode == 1
    assert result.stderr.splitlines()[1:] == ["  scripts/bench.py", "  tests/test_x.py"]
    assert "name an absolute path" in result.stderr


def test_a_clean_checkout_passes(tmp_path):
    repo = git_repo(tmp_path / "clone", {"README.md": "cd into the clone, then run scripts/test\n",
                                         "scripts/x.py": "ROOT = Path(__file__).resolve().parent.parent\n"})
    result = check(repo)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "check-paths: no tracked file names an absolute path\n"


def test_the_checkout_path_counts_only_where_it_ends_a_path_name(tmp_path):
    repo = git_repo(tmp_path / "x.y", {"docs/run.md": f"python scripts/run.py --work {tmp_path}/x.yz\n",
                                       "docs/other.md": f"also {tmp_path}/xay/notes\n"})
    assert check(repo).returncode == 0, check(repo).stderr
    (repo / "docs" / "cd.md").write_text(f"cd {tmp_path}/x.y\n")
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True)
    result = check(repo)
    assert result.returncode == 1
    assert result.stderr.splitlines()[1:] == ["  docs/cd.md"]
