"""What the launcher calls each state that sacct or squeue reports, in one table, and which of them are ended.

    python -m launch status 4242     # job 4242 (...): CANCELLED  (sacct: 4242_[0-1%2] CANCELLED by 0)

`SLURM` maps every job state of SLURM's sacct and squeue (long names, squeue's short codes,
and the job-state words SLURM may add) to one of the launcher's `STATES`; `launch status`
prints the launcher's name, and `launch logs` (following) and `--wait` end on every state
that `STATES` marks ended. A state that is not in the table (a SLURM newer than this table)
is UNKNOWN, as is a job neither sacct nor squeue knows, and neither ends a follower.

A pending array range (`4242_[2-5%2]`, `4242_[0,3]`: the tasks that have not started) stands
for each task in it, so a sweep cancelled before any task started reads CANCELLED.
"""

from __future__ import annotations

import re

# The launcher's states: True for those that end the job (followers stop, --wait returns).
STATES: dict[str, bool] = {
    "PENDING": False,  # waiting for resources, or held
    "RUNNING": False,
    "SUSPENDED": False,  # stopped by the scheduler; resumes later
    "REQUEUED": False,  # back in the queue (a timeout, a preemption, an elastic requeue): runs again
    "COMPLETING": False,  # the job's processes are ending; its last lines may still come
    "COMPLETED": True,
    "CANCELLED": True,
    "FAILED": True,
    "TIMEOUT": True,
    "PREEMPTED": True,
    "NODE_FAIL": True,
    "OUT_OF_MEMORY": True,
    "BOOT_FAIL": True,
    "DEADLINE": True,
    "REVOKED": True,  # a federated sibling removed: the job runs on another cluster, not this one
    "ENDED": True,  # a local job whose controller is gone without a complete run
    "UNKNOWN": False,  # no scheduler answer (yet)
}
ENDED = frozenset(state for state, ended in STATES.items() if ended)

# sacct / squeue state (long name or squeue's %t code) -> launcher state.
SLURM: dict[str, str] = {
    "PENDING": "PENDING", "PD": "PENDING",
    "CONFIGURING": "PENDING", "CF": "PENDING",  # nodes allocated, booting: nothing runs yet
    "REQUEUE_HOLD": "REQUEUED", "RH": "REQUEUED",
    "REQUEUE_FED": "REQUEUED", "RF": "REQUEUED",
    "REQUEUED": "REQUEUED", "RQ": "REQUEUED",
    "SPECIAL_EXIT": "REQUEUED", "SE": "REQUEUED",  # requeued and held after a special exit code
    "RESV_DEL_HOLD": "PENDING", "RD": "PENDING",
    "RUNNING": "RUNNING", "R": "RUNNING",
    "RESIZING": "RUNNING", "RS": "RUNNING",
    "SIGNALING": "RUNNING", "SI": "RUNNING",
    "SUSPENDED": "SUSPENDED", "S": "SUSPENDED",
    "STOPPED": "SUSPENDED", "ST": "SUSPENDED",
    "COMPLETING": "COMPLETING", "CG": "COMPLETING",
    "STAGE_OUT": "COMPLETING", "SO": "COMPLETING",
    "COMPLETED": "COMPLETED", "CD": "COMPLETED",
    "CANCELLED": "CANCELLED", "CA": "CANCELLED",  # sacct: "CANCELLED by UID"
    "FAILED": "FAILED", "F": "FAILED",
    "TIMEOUT": "TIMEOUT", "TO": "TIMEOUT",
    "PREEMPTED": "PREEMPTED", "PR": "PREEMPTED",
    "NODE_FAIL": "NODE_FAIL", "NF": "NODE_FAIL",
    "OUT_OF_MEMORY": "OUT_OF_MEMORY", "OOM": "OUT_OF_MEMORY",
    "BOOT_FAIL": "BOOT_FAIL", "BF": "BOOT_FAIL",
    "DEADLINE": "DEADLINE", "DL": "DEADLINE",
    "REVOKED": "REVOKED", "RV": "REVOKED",
}
ARRAY_RANGE = re.compile(r"(?P<job>\d+)_\[(?P<tasks>[0-9,\-]+)(?:%\d+)?\]")


def launcher_state(reported: str) -> str:
    """The launcher's state for what sacct or squeue printed ("CANCELLED by 0", "PD", "RUNNING"); UNKNOWN if none."""
    words = reported.split()
    return SLURM.get(words[0], "UNKNOWN") if words else "UNKNOWN"


def ended(state: str) -> bool:
    return state in ENDED


def in_range(job_id: str, reported_id: str) -> bool:
    """Whether the array task ``job_id`` ("4242_3") is one of the pending range ``reported_id`` ("4242_[2-5%2]")."""
    match, (job, _, task) = ARRAY_RANGE.fullmatch(reported_id), job_id.partition("_")
    if match is None or match["job"] != job or not task.isdigit():
        return False
    for part in match["tasks"].split(","):
        bounds = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if bounds and int(bounds[1]) <= int(task) <= int(bounds[2] or bounds[1]):
            return True
    return False


def state_of(job_id: str, reported: dict[str, str]) -> str | None:
    """The state reported for ``job_id`` itself, else for a pending array range holding it; None when neither."""
    if job_id in reported:
        return reported[job_id]
    return next((state for shown, state in reported.items() if in_range(job_id, shown)), None)
