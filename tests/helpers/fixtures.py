"""Session fixtures the test files share (made available to all of them by tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.commands import TINY, run_train


@pytest.fixture(scope="session")
def reference_runs(tmp_path_factory) -> Callable[[tuple[str, ...], int], Path]:
    """Uninterrupted runs of TINY (+ extra args) shared by the tests that compare against them."""
    cache: dict[tuple[tuple[str, ...], int], Path] = {}

    def get(extra: tuple[str, ...] = (), nproc: int = 1) -> Path:
        key = (extra, nproc)
        if key not in cache:
            tmp = tmp_path_factory.mktemp("reference")
            run_train([*TINY, f"run.dir={tmp / 'run'}", *extra], tmp, nproc=nproc)
            cache[key] = tmp / "run"
        return cache[key]

    return get
