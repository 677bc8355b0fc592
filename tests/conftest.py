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
