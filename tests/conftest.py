"""What every test file gets: the shared helpers (tests/helpers/, imported as `tests.helpers`) and fixtures.

The names below stay importable as ``from conftest import ...``; new code imports them from
`tests.helpers.commands` (and the fixtures come from here, by name).
"""

from __future__ import annotations

import fcntl
import os
import signal
from collections.abc import Iterator
from pathlib import Path

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
from tests.helpers.photos import photo_folder  # noqa: F401  (a fixture, session-wide: real photo tiles and bad files)
from tests.helpers.processes import kill_leftovers
from tests.helpers.slurm import DEFAULT_STATE_DIR, slurm_cluster  # noqa: F401  (the local SLURM cluster, session-wide)


@pytest.fixture(autouse=True)
def _no_process_left_behind() -> Iterator[None]:
    """Whatever a test started through `tests.helpers.processes.Job` and left running is killed after it."""
    yield
    kill_leftovers()


def pytest_configure(config: pytest.Config) -> None:
    """The processes the tests start get a terminal job's signal handling. A test run started in the
    background of a script (`pytest ... &`, nohup) ignores SIGINT and SIGQUIT (nohup: SIGHUP too),
    and what a process ignores, every process it starts ignores: a launcher would never see the
    Ctrl-C a test sends it, nor its ssh the SIGTERM. (Under pytest-xdist each worker runs this too.)"""
    for sig, handler in ((signal.SIGINT, signal.default_int_handler), (signal.SIGQUIT, signal.SIG_DFL),
                         (signal.SIGHUP, signal.SIG_DFL)):
        if signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, handler)


INHERITED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGQUIT)


@pytest.fixture(autouse=True)
def _signal_handling_left_as_it_was() -> Iterator[None]:
    """A test that leaves a signal ignored or blocked in this process leaves it so in every process the
    later tests start (both are inherited): a launcher that never sees its Ctrl-C, an ssh that ignores
    SIGTERM. Such a test fails here, and the handling is put back for the next one."""
    before = {sig: signal.getsignal(sig) for sig in INHERITED_SIGNALS}
    ignored, mask = _ignored_here(), signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    changed = [sig.name for sig in INHERITED_SIGNALS if signal.getsignal(sig) != before[sig]]
    now_ignored, blocked = _ignored_here(), signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    for sig, handler in before.items():
        if handler is not None:
            signal.signal(sig, handler)  # also where C code changed it behind Python's back
    if changed or blocked != mask or now_ignored != ignored:
        pytest.fail(f"the test left signal handling changed: handlers of {changed}, blocked {sorted(blocked)} "
                    f"instead of {sorted(mask)}, ignored {now_ignored} instead of {ignored}", pytrace=False)


def _ignored_here() -> list[str]:
    """The signals this process ignores, as the kernel has it (C code can change it without Python knowing)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("SigIgn:"))
    bits = int(line.split()[1], 16)
    return [signal.Signals(n).name for n in range(1, 32) if bits >> (n - 1) & 1]


def uses_slurm(item: pytest.Item) -> bool:
    """A test that runs jobs on the local SLURM cluster (its fixture, or a `slurm` parameter that asks for it)."""
    params = getattr(item, "callspec", None)
    return "slurm_cluster" in getattr(item, "fixturenames", ()) or params is not None and "slurm" in params.id.split("-")


def pytest_itemcollected(item: pytest.Item) -> None:
    """Under pytest-xdist (`-n 2 --dist loadgroup`, the README's test command) the tests that use the local
    SLURM cluster run on one worker, one after another: each needs the nodes idle, and one takes a node's
    network down. Every other test goes to whichever worker is free. (Marked as each test is collected:
    pytest-xdist reads the marks in its own pytest_collection_modifyitems.)"""
    if uses_slurm(item):
        item.add_marker(pytest.mark.xdist_group("slurm"))


@pytest.fixture(autouse=True)
def _one_slurm_test_at_a_time(request: pytest.FixtureRequest) -> Iterator[None]:
    """Whatever schedules them, two SLURM tests never run at once: each holds this lock while it runs."""
    if not uses_slurm(request.node):
        yield
        return
    state_dir = Path(os.environ.get("AE_DIST_SLURM_STATE", DEFAULT_STATE_DIR))  # as the slurm_cluster fixture
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "one-test-at-a-time.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield
