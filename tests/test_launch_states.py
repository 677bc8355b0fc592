"""Job states: every state sacct or squeue reports maps to one the launcher knows (`launch.states`), for plain
jobs, array tasks, pending array ranges and elastic jobs, and `launch logs` (following) and `--wait` end on
every ended one; `launch cancel` on an ended job says so.

    /work/main/.venv/bin/python -m pytest tests/test_launch_states.py -q
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest

from launch import jobs, states
from launch.jobs import Record, Run

pytestmark = pytest.mark.fast
FOLLOW_DEADLINE_S = 20.0
# Every job state SLURM 22.05 documents for sacct (JOB STATE CODES) and squeue (JOB STATE CODES, with %t's codes).
SLURM_STATES = (
    "BOOT_FAIL", "BF", "CANCELLED", "CA", "COMPLETED", "CD", "CONFIGURING", "CF", "COMPLETING", "CG", "DEADLINE", "DL",
    "FAILED", "F", "NODE_FAIL", "NF", "OUT_OF_MEMORY", "OOM", "PENDING", "PD", "PREEMPTED", "PR", "RUNNING", "R",
    "RESV_DEL_HOLD", "RD", "REQUEUE_FED", "RF", "REQUEUE_HOLD", "RH", "REQUEUED", "RQ", "RESIZING", "RS", "REVOKED",
    "RV", "SIGNALING", "SI", "SPECIAL_EXIT", "SE", "STAGE_OUT", "SO", "STOPPED", "ST", "SUSPENDED", "S", "TIMEOUT",
    "TO",
)


def record_of(runs: list[str], tasks: int = 1, tmp: Path = Path("/nonexistent")) -> Record:
    return Record("4242", "slurm", "2026-12-03T10:00:00", "login", "slurm: test", tasks, "p", "", "offline",
                  [Run(job, str(tmp / job), "id", [str(tmp / f"{job}_{task}.out") for task in range(tasks)])
                   for job in runs])


class Scheduler:
    """What squeue and sacct print for the job, as `jobs._run` would get it."""

    def __init__(self, monkeypatch) -> None:
        self.squeue: list[tuple[str, str]] = []
        self.sacct: list[tuple[str, str]] = []
        monkeypatch.setattr(jobs, "_run", self.run)

    def run(self, cmd: list[str]) -> str:
        if cmd[0] == "squeue":
            return "".join(f"{job} {state}\n" for job, state in self.squeue)
        if cmd[0] == "sacct":
            return "".join(f"{job}|{state}|0:0|00:00:05|aenode1\n" for job, state in self.sacct)
        return ""


def followers_end(record: Record) -> bool:
    """`launch logs` (following) and `--wait` both return, within the deadline."""
    from launch import submit

    done = []
    threads = [threading.Thread(target=lambda: (jobs.logs(record, out=io.StringIO()), done.append("logs")), daemon=True),
               threading.Thread(target=lambda: (submit.wait(record, [], interval_s=0.01), done.append("wait")),
                                daemon=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(FOLLOW_DEADLINE_S)
    return sorted(done) == ["logs", "wait"]


SHAPES = {  # record, what the scheduler prints for it (given the reported state), the runs that take that state
    "plain job": (["4242"], 1, lambda state: [("4242", state)], ["4242"]),
    "array task": (["4242_0", "4242_1"], 1, lambda state: [("4242_0", "COMPLETED"), ("4242_1", state)], ["4242_1"]),
    "pending array range": (["4242_0", "4242_1", "4242_2"], 1, lambda state: [("4242_0", "COMPLETED"),
                                                                              ("4242_[1-2%2]", state)],
                            ["4242_1", "4242_2"]),
    "elastic job": (["4242"], 3, lambda state: [("4242", state)], ["4242"]),
}


def test_the_table_names_every_slurm_state_and_only_launcher_states() -> None:
    assert set(states.SLURM) == set(SLURM_STATES)
    assert set(states.SLURM.values()) <= set(states.STATES)
    assert states.launcher_state("CANCELLED by 0") == "CANCELLED" and states.launcher_state("") == "UNKNOWN"
    assert states.launcher_state("SOMETHING_NEW") == "UNKNOWN" and not states.ended("UNKNOWN")


@pytest.mark.parametrize("source", ["sacct", "squeue"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_reported_state_maps_and_followers_end_on_every_ended_one(shape: str, source: str, monkeypatch,
                                                                         tmp_path: Path) -> None:
    monkeypatch.setattr(jobs, "FOLLOW_INTERVAL_S", 0.01)
    runs, tasks, printed, taking = SHAPES[shape]
    record = record_of(runs, tasks, tmp_path)
    scheduler = Scheduler(monkeypatch)
    for reported in [*SLURM_STATES, "CANCELLED by 0", "CANCELLED by 1234"]:
        expected = states.launcher_state(reported)
        assert expected in states.STATES and expected != "UNKNOWN", reported
        rows = printed(reported)
        if source == "sacct":
            scheduler.sacct, scheduler.squeue = rows, []
        else:  # squeue lists only live jobs; the array's finished task is in sacct
            scheduler.sacct = [row for row in rows if row[1] == "COMPLETED"]
            scheduler.squeue = [row for row in rows if row[1] != "COMPLETED"]
        now = jobs.states(record)
        assert {job: now[job] for job in taking} == dict.fromkeys(taking, expected), (reported, now)
        assert jobs.finished(record) == states.ended(expected), (reported, now)
        if states.ended(expected):
            assert followers_end(record), (shape, source, reported)


def test_a_sweep_cancelled_before_any_task_started_reads_cancelled_and_followers_end(monkeypatch, tmp_path: Path) -> None:
    """As sacct shows it: one row for the whole pending range, `4242_[0-1%2] CANCELLED by 0`."""
    monkeypatch.setattr(jobs, "FOLLOW_INTERVAL_S", 0.01)
    record = record_of(["4242_0", "4242_1"], 1, tmp_path)
    Scheduler(monkeypatch).sacct = [("4242_[0-1%2]", "CANCELLED by 0")]
    assert jobs.states(record) == {"4242_0": "CANCELLED", "4242_1": "CANCELLED"}
    out = io.StringIO()
    jobs.status(record, out)
    assert out.getvalue().startswith("job 4242 (slurm: test; submitted 2026-12-03T10:00:00 on login): CANCELLED\n")
    assert followers_end(record)


def test_pending_ranges_hold_only_their_own_tasks(monkeypatch, tmp_path: Path) -> None:
    record = record_of(["4242_0", "4242_1", "4242_2", "4242_3", "4242_12"], 1, tmp_path)
    scheduler = Scheduler(monkeypatch)
    scheduler.squeue = [("4242_0", "RUNNING"), ("4242_[2,12]", "PENDING")]
    scheduler.sacct = [("4242_0", "RUNNING"), ("4242_1", "COMPLETED"), ("4242_[2,12]", "PENDING")]
    assert jobs.states(record) == {"4242_0": "RUNNING", "4242_1": "COMPLETED", "4242_2": "PENDING",
                                   "4242_3": "UNKNOWN", "4242_12": "PENDING"}


@pytest.mark.parametrize(("rows", "line"), [
    ([("4242", "COMPLETED")], "job 4242 had already ended (COMPLETED); nothing to cancel"),
    ([("4242", "CANCELLED by 0")], "job 4242 had already ended (CANCELLED); nothing to cancel"),
    ([("4242", "RUNNING")], "cancelled job 4242"),
])
def test_cancel_says_when_the_job_had_already_ended(rows, line: str, monkeypatch, tmp_path: Path) -> None:
    record = record_of(["4242"], 1, tmp_path)
    Scheduler(monkeypatch).sacct = rows
    called = []

    def scancel(cmd, **kwargs):
        called.append(cmd)
        return jobs.subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(jobs.subprocess, "run", scancel)
    assert jobs.cancel(record) == line
    assert called == ([] if "already" in line else [["scancel", "4242"]])


def test_cancel_names_the_runs_of_an_array_that_had_ended(monkeypatch, tmp_path: Path) -> None:
    record = record_of(["4242_0", "4242_1"], 1, tmp_path)
    Scheduler(monkeypatch).sacct = [("4242_0", "COMPLETED"), ("4242_1", "FAILED")]
    assert jobs.cancel(record) == "job 4242 had already ended (4242_0 COMPLETED, 4242_1 FAILED); nothing to cancel"
