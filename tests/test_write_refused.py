"""A run folder the OS will not let the trainer write: the error line names the OS's cause and the fix for it
(`ae_dist.errors.OS_FIXES`), exit 1, no traceback, the folder as it was. A run continued on a read-only
mount and on a full tmpfs (as root), and in a folder of another user's (as `nobody`).

    /work/main/.venv/bin/python -m pytest tests/test_write_refused.py -q    # as root (mounts, setpriv)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.commands import PYTHON, REPO, clean_env
from tests.helpers.faults import fill_disk, one_clear_line, tmpfs

SMALL = ["data.name=synthetic", "data.synthetic_train=64", "data.synthetic_test=16", "train.batch_size=32",
         "model.hidden=8", "wandb.mode=disabled", "train.threads=1", "run.progress=off"]
FIRST, CONTINUED = [*SMALL, "train.epochs=1"], [*SMALL, "train.epochs=2"]  # a finished run, then its continuation
NOBODY = 65534


def train(args: list[str], tmp: Path, python: list[str] | None = None,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*(python or [PYTHON]), "-m", "ae_dist.train", *args], cwd=tmp, env=env or clean_env(tmp),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("finished")
    done = train([*FIRST, f"run.dir={tmp / 'run'}"], tmp)
    assert done.returncode == 0, done.stderr
    return tmp / "run"


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_read_only_run_folder_names_the_read_only_file_system(finished_run: Path, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "32m") as disk:
        shutil.copytree(finished_run, disk / "run")
        before = files(disk / "run")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        result = train([*CONTINUED, f"run.dir={disk / 'run'}"], tmp_path)
        assert result.returncode == 1, result.stderr
        line = one_clear_line(result.stderr)
        assert "Read-only file system (run.dir): remount it read-write, or continue in a copy of the run folder" in line
        assert "the newest checkpoint is intact: then run the same command to resume" in line
        assert "free space" not in line, line
        assert files(disk / "run") == before
    print(f"\n[read-only] {line}")


def test_full_disk_names_no_space_and_says_free_space(finished_run: Path, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "32m") as disk:
        shutil.copytree(finished_run, disk / "run")
        fill_disk(disk, leave_bytes=0)
        result = train([*CONTINUED, f"run.dir={disk / 'run'}"], tmp_path)
        assert result.returncode == 1, result.stderr
        line = one_clear_line(result.stderr)
        assert "No space left on device (run.dir): free space on that file system (df -h" in line, line
    print(f"\n[full disk] {line}")


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder another user can reach (pytest's own are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="ae-dist-perm-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_permission_denied_names_it_as_another_user(finished_run: Path, shared_tmp: Path) -> None:
    """The run folder belongs to root; `nobody` continues it. This venv's python lives in root's private home,
    so the same interpreter version from /usr/bin runs the trainer with this venv's packages."""
    system_python = Path("/usr/bin") / f"python{sys.version_info.major}.{sys.version_info.minor}"
    if not system_python.exists() or not shutil.which("setpriv"):
        pytest.skip(f"needs {system_python} and setpriv")
    run_dir, home = shared_tmp / "run", shared_tmp / "home"
    shutil.copytree(finished_run, run_dir)
    for path in (run_dir, *run_dir.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    home.mkdir()
    shutil.chown(home, NOBODY, NOBODY)
    before = files(run_dir)
    site = sysconfig.get_paths()["purelib"]
    runner = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", str(system_python), "-c",
              f"import runpy, site, sys; site.addsitedir({site!r}); sys.argv[0] = 'ae_dist.train'; "
              "runpy.run_module('ae_dist.train', run_name='__main__', alter_sys=True)"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    result = subprocess.run([*runner, *CONTINUED, f"run.dir={run_dir}"], cwd=shared_tmp, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    line = one_clear_line(result.stderr)
    assert "Permission denied (run.dir): give this user permission there (ls -ld shows the owner)" in line, line
    assert files(run_dir) == before
    print(f"\n[permission denied] {line}")
