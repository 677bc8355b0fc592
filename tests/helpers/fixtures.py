"""Session fixtures the test files share (made available to all of them by tests/conftest.py)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.commands import TINY, run_train


@pytest.fixture(scope="session")
def reference_runs(tmp_path_factory) -> Callable[[tuple[str, ...], int], Path]:
    """Uninterrupted runs of TINY (+ extra args) shared by the tests that compare against them.

    Under pytest-xdist each worker has a session of its own; the runs go in the folder the
    workers share, each made once by whichever worker asks first while the others wait on
    its lock. Tests only read them.
    """
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base

    def get(extra: tuple[str, ...] = (), nproc: int = 1) -> Path:
        name = hashlib.sha256(repr((extra, nproc)).encode()).hexdigest()[:16]
        tmp = shared / f"reference-{name}"
        with open(shared / f"reference-{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (tmp / "done").exists():
                shutil.rmtree(tmp, ignore_errors=True)  # a run that failed half-way is not a reference
                tmp.mkdir()
                run_train([*TINY, f"run.dir={tmp / 'run'}", *extra], tmp, nproc=nproc)
                (tmp / "done").touch()
        return tmp / "run"

    return get
