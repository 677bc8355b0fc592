"""A holder that lost the run folder's lease writes nothing more; the lease's own races.

Real processes: a holder in another host's UTS namespace (its own hostname), stopped with
SIGSTOP until its heartbeat is stale, taken over by a second launch, then continued.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from ae_dist.run import lease as lease_module
from ae_dist.run.lease import LEASE, Lease, LeaseLost, check_held, read_holder
from tests.helpers.commands import TINY, hook_env, load_weights, train_cmd, wait_for
from tests.helpers.faults import one_clear_line
from tests.helpers.processes import Job
from tests.helpers.run_files import checkpoint_steps

OTHER_HOST = "fenced-node"
STALE_S = 4


def test_a_holder_taken_over_while_stopped_writes_nothing_after_it_continues(reference_runs, tmp_path: Path) -> None:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) for a UTS namespace of its own")
    reference = reference_runs((), 1)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    args = [*TINY, f"run.dir={run_dir}", "wandb.mode=disabled", f"run.lease_stale_s={STALE_S}"]
    audit = tmp_path / "holder-writes.log"
    env = hook_env(tmp_path, "audit_writes", SLOW_STEP_S="0.3", AUDIT_LOG=str(audit), AUDIT_UNDER=str(run_dir))
    other_host = ["unshare", "--uts", "sh", "-c", f'hostname {OTHER_HOST} && exec "$@"', "sh", *train_cmd(args)]
    holder = Job.command([other_host], tmp_path, [env], name="holder")
    wait_for(lambda: checkpoint_steps(run_dir) or holder.check_running(), 240, "the holder's first checkpoint")
    pid = holder.procs[0].pid
    assert json.loads((run_dir / LEASE).read_text())["host"] == OTHER_HOST
    os.kill(pid, signal.SIGSTOP)
    stopped_at = time.time()
    wait_for(lambda: time.time() - (run_dir / LEASE).stat().st_mtime > STALE_S, 60, "the holder's heartbeat to go stale")
    taker = Job.start(args, tmp_path, name="taker")
    wait_for(lambda: "warning: taking over the lease" in taker.stderr() or taker.check_running(), 120, "the takeover")
    os.kill(pid, signal.SIGCONT)  # while the new holder trains
    assert holder.wait(60) == [1], holder.output()[-3000:]
    line = one_clear_line(holder.stderr())
    assert line.startswith(f"error: this run lost the lease of {run_dir} to ") and "(run.lease_stale_s)" in line, line
    assert taker.wait() == [0], taker.output()[-3000:]
    late = [entry for entry in audit.read_text().splitlines() if float(entry.split()[0]) >= stopped_at]
    assert late == [], late  # nothing after the stop: no metrics line, checkpoint, picture, run.json or heartbeat
    assert audit.read_text().strip(), "the audit saw none of the holder's writes before its stop"
    ours, theirs = load_weights(run_dir / "model.pt"), load_weights(reference / "model.pt")
    assert list(ours) == list(theirs) and all(ours[k].equal(theirs[k]) for k in ours)


@pytest.mark.fast
def test_check_held_raises_once_another_holder_replaced_the_lease(tmp_path: Path) -> None:
    held = Lease(tmp_path, 60)
    held.take()
    try:
        check_held()  # ours: nothing
        (tmp_path / LEASE).unlink()
        rival = Lease(tmp_path, 60)
        rival._create()
        held._confirm()  # what the beat thread does at its next beat
        with pytest.raises(LeaseLost, match="lost the lease"):
            check_held("metrics.jsonl")
    finally:
        held.release()
    assert read_holder(tmp_path).token == rival.token  # the lost holder's release leaves the new lease alone
    assert lease_module._held is None


@pytest.mark.fast
def test_a_holder_frozen_past_half_the_stale_time_looks_again_before_writing(tmp_path: Path) -> None:
    held = Lease(tmp_path, 60)
    held.take()
    try:
        (tmp_path / LEASE).unlink()
        Lease(tmp_path, 60)._create()
        held._confirmed -= 31  # as if the process had been stopped for 31 s: the beat thread has not looked yet
        assert not held._lost.is_set()
        with pytest.raises(LeaseLost):
            check_held("model.pt")
    finally:
        held.release()


@pytest.mark.fast
def test_link_reporting_eexist_after_it_succeeded_counts_as_created(tmp_path: Path, monkeypatch) -> None:
    real_link = os.link

    def nfs_retransmitted_link(source, target, *args, **kwargs):
        real_link(source, target)
        raise FileExistsError(17, "File exists", str(target))

    monkeypatch.setattr(os, "link", nfs_retransmitted_link)
    held = Lease(tmp_path, 60)
    assert held._create()
    assert read_holder(tmp_path).token == held.token


@pytest.mark.fast
def test_a_late_contender_does_not_rename_a_fresh_lease_away(tmp_path: Path) -> None:
    stale = Lease(tmp_path, 60)
    stale._create()
    old = read_holder(tmp_path)
    first, late = Lease(tmp_path, 60), Lease(tmp_path, 60)
    first._remove_stale(old)  # the first contender took the stale lease away ...
    assert first._create()  # ... and holds its own
    late._remove_stale(old)  # the late one read the same stale holder: it must not touch first's lease
    assert read_holder(tmp_path).token == first.token
    third = Lease(tmp_path, 60)
    assert not third._create()  # the folder is never left without a lease in between
    first.release()
    assert not list(tmp_path.glob(f"{LEASE}*"))
