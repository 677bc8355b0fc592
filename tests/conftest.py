"""What every test file gets: the shared helpers (tests/helpers/, imported as `tests.helpers`) and fixtures.

The names below stay importable as ``from conftest import ...``; new code imports them from
`tests.helpers.commands` (and the fixtures come from here, by name).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.commands import (  # noqa: F401  (re-exported)
    PYTHON,
    REPO,
    TINY,
    assert_bitwise_equal,
    clean_env,
    load_weights,
    run_train,
    train_cmd,
    wait_for,
)
from tests.helpers.fixtures import reference_runs  # noqa: F401  (a fixture, session-wide)
from tests.helpers.processes import kill_leftovers
from tests.helpers.slurm import slurm_cluster  # noqa: F401  (the local SLURM cluster, session-wide)


@pytest.fixture(autouse=True)
def _no_process_left_behind() -> Iterator[None]:
    """Whatever a test started through `tests.helpers.processes.Job` and left running is killed after it."""
    yield
    kill_leftovers()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`-n 2 --dist loadgroup`, the README's test command) the tests that use the local
    SLURM cluster run on one worker, one after another: each needs the nodes idle, and one takes a node's
    network down. Every other test goes to whichever worker is free."""
    for item in items:
        params = getattr(item, "callspec", None)
        if "slurm_cluster" in item.fixturenames or params is not None and "slurm" in params.id.split("-"):
            item.add_marker(pytest.mark.xdist_group("slurm"))
