"""After the job step of an elastic job ends: finish, requeue (without the hosts that failed), or fail.

Both batch scripts end with it: `slurm/train-elastic.sbatch` after its `srun`, and the
submitit job through its teardown line, so the job's state in sacct is this decision's:

    python -m launch.elastic settle --status $? --run-dir runs/x --max-node-failures 2

- the run is complete (`ae_dist.run.completion`: its wrap-up recorded it, for the job's own
  train.epochs and train.max_steps when the trainer's arguments are given; the survivors
  finished after a node was lost, even if srun reports the lost node's task as killed): exit 0,
  COMPLETED. A finished run continued with a larger train.epochs is not complete until that
  continuation's wrap-up, whatever model.pt it still holds from before;
- an incident of this start of the job named hosts (a rank hung, or its node was lost) and the
  run is not complete, or the trainer stopped on a signal (exit 75): `scontrol requeue`, then
  `scontrol update ExcNodeList=` the job's excluded hosts plus every host its incidents named
  (a running job's ExcNodeList cannot change; a requeued one's can, until it starts again),
  unless more hosts failed than --max-node-failures allows: exit 1, FAILED;
- anything else: srun's status, FAILED.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ae_dist.dist import incidents
from ae_dist.dist.job import Job, expand_hosts
from ae_dist.errors import EXIT_PREEMPTED, printable
from ae_dist.run import completion
from ae_dist.run.folder import RunDir

if TYPE_CHECKING:
    from ae_dist.config import TrainConfig


def say(line: str) -> None:
    print(f"elastic: {printable(line)}", flush=True)


def excluded_now(job: str) -> list[str]:
    """The job's ExcNodeList as scontrol shows it (the user's --exclude plus earlier requeues')."""
    try:
        text = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    fields = dict(item.split("=", 1) for item in text.split() if "=" in item)
    return expand_hosts(fields.get("ExcNodeList", ""))


def requeue(job: str, exclude: list[str]) -> bool:
    """Requeue the running job, then set its excluded hosts while it waits; True when scontrol agreed."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the requeue stops this script; the update must still run
    done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    if done.returncode:
        say(f"scontrol requeue {job} failed: {done.stderr.strip()[-200:]}")
        return False
    if exclude:
        update = subprocess.run(["scontrol", "update", f"JobId={job}", f"ExcNodeList={','.join(exclude)}"],
                                capture_output=True, text=True, timeout=60)
        if update.returncode:
            say(f"could not exclude {','.join(exclude)} ({update.stderr.strip()[-200:]}); "
                "those hosts skip themselves when the job starts again")
    return True


def settle(status: int, run_dir: Path, max_node_failures: int, max_requeues: int | None,
           env: dict[str, str] | None = None, train: TrainConfig | None = None) -> int:
    """The batch script's exit status for an elastic job step that ended with ``status``; may requeue the job.
    ``train``: the job's train section, when known (its targets decide, with the completion record)."""
    env = dict(os.environ if env is None else env)
    job, restart = env.get("SLURM_JOB_ID", ""), env.get("SLURM_RESTART_COUNT", "0")
    folder = RunDir(run_dir)
    if completion.is_complete(folder, train):
        say(f"run complete ({folder.complete}); job step status {status}")
        return 0
    failed_now = incidents.failed_hosts(folder.incidents, Job.from_env(env).id, restart)
    if not failed_now and status != EXIT_PREEMPTED:
        say(f"the job step ended with status {status} and the run is not complete; see the logs above")
        return status or 1
    failed = incidents.failed_hosts(folder.incidents, Job.from_env(env).id)
    reason = f"{', '.join(failed_now)} failed" if failed_now else "stopped by a signal after a checkpoint"
    if len(failed) > max_node_failures:
        print(f"error: {len(failed)} hosts failed in job {job} ({', '.join(failed)}) "
              f"(--max-node-failures={max_node_failures}): not requeued; the newest checkpoint is intact, "
              f"see {folder.incidents} and submit again", file=sys.stderr, flush=True)
        return 1
    if max_requeues is not None and int(restart) >= max_requeues:
        print(f"error: job {job} was requeued {restart} times (--max-requeues={max_requeues}): not again; the newest "
              "checkpoint is intact, submit the same command to continue", file=sys.stderr, flush=True)
        return 1
    exclude = list(dict.fromkeys([*excluded_now(job), *failed]))
    with contextlib.suppress(OSError):
        incidents.write_verdict(folder.incidents, incidents.stamp_now(), {
            "kind": "requeue", "job": Job.from_env(env).id, "restart": restart, "reason": reason, "excluded": exclude})
    say(f"{reason}; requeueing job {job}" + (f" without {','.join(exclude)}" if exclude else ""))
    return 0 if requeue(job, exclude) else 1
