"""Runs of TINY killed with SIGKILL at chosen points, then rerun with the same command.

Shared by test_resume.py (final weights) and test_wandb.py (what W&B and metrics.jsonl hold
across the kills). Each run is made once per pytest session and kept in `_RUNS`. A kill
takes the whole job at once (`tests.helpers.processes.Job.kill_when`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ae_dist.run.folder import RunDir
from tests.helpers.commands import TINY, clean_env, hook_env
from tests.helpers.processes import Job
from tests.helpers.run_files import checkpoint, logged_steps, metrics
from tests.helpers.schedule import Schedule, schedule


@dataclass
class Leg:
    """One launch of the command: how it ended and what the run folder held then."""

    name: str
    returncode: int
    stdout: str
    stderr: str
    checkpoints: list[str]  # complete checkpoint names, oldest first
    temporaries: list[str]  # partial files of an interrupted write
    metrics: list[dict] = field(default_factory=list)

    def newest_step(self) -> int:
        return int(self.checkpoints[-1][5:13]) if self.checkpoints else -1


@dataclass(frozen=True)
class KillPoints:
    """Where the legs of an interrupted run of TINY are killed, from its schedule."""

    after_checkpoint: int  # 1. as soon as this checkpoint exists (the first of the interval, epoch 1)
    mid_epoch: int  # 2. as soon as this step is logged: epoch 2, after steps no checkpoint holds
    in_write: int  # 3. frozen inside the write of this checkpoint (epoch 3; the newest complete one is epoch 2's end)

    @classmethod
    def of(cls, s: Schedule) -> KillPoints:
        after_epoch_2 = [step for step in s.checkpoints() if step > s.epoch_end(2)]
        return cls(s.every_steps, s.epoch_end(1) + 2, after_epoch_2[0])


@dataclass
class InterruptedRun:
    run_dir: Path
    args: list[str]
    nproc: int
    legs: list[Leg]
    schedule: Schedule
    kills: KillPoints


def snapshot(name: str, job: Job, returncode: int) -> Leg:
    folder = RunDir(job.run_dir).checkpoints
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    return Leg(name, returncode, job.stdout(), job.stderr(), [n for n in names if n.startswith("step_")],
               [n for n in names if ".tmp-" in n], metrics(job.run_dir))


def launch(name: str, args: list[str], tmp: Path, nproc: int, kill_when: Callable[[], object] | None = None,
           what: str = "", env: dict[str, str] | None = None) -> Leg:
    """Run the command; with ``kill_when``, SIGKILL the job as soon as it returns true."""
    job = Job.start(args, tmp, nproc, env=env or clean_env(tmp), name=name)
    (returncode,) = job.wait() if kill_when is None else job.kill_when(kill_when, what)
    return snapshot(name, job, returncode)


def interrupted_run(factory: pytest.TempPathFactory, nproc: int) -> InterruptedRun:
    """TINY (3 epochs of 23 steps, checkpoints every 10 steps and at the epoch ends) killed three
    times, then run to the end; every launch is the same command and the same run.dir:

    1. right after a checkpoint: as soon as the first interval checkpoint (step 10) exists;
    2. mid-epoch: as soon as metrics.jsonl holds epoch 2's second step (25; steps 24.. not saved);
    3. during a checkpoint write: the writer of the first checkpoint after epoch 2 (step 50) is
       frozen halfway through the file and the job killed (the newest complete one is step 46);
    4. the same command again, to the end.
    """
    if nproc in _RUNS:
        return _RUNS[nproc]
    tmp = factory.mktemp(f"interrupted{nproc}")
    run_dir = tmp / "run"
    args = [*TINY, f"run.dir={run_dir}"]
    s = schedule(TINY)
    kills = KillPoints.of(s)
    legs = [
        launch("after_checkpoint", args, tmp, nproc, checkpoint(run_dir, kills.after_checkpoint).exists,
               f"checkpoint step {kills.after_checkpoint}"),
        launch("mid_epoch", args, tmp, nproc, lambda: max(logged_steps(run_dir), default=0) >= kills.mid_epoch,
               f"step {kills.mid_epoch} in metrics.jsonl"),
        launch("in_write", args, tmp, nproc, write_started(run_dir, kills.in_write),
               f"the write of checkpoint step {kills.in_write}",
               env=hook_env(tmp, "freeze_in_write", FREEZE_AT_CHECKPOINT=str(kills.in_write))),
        launch("to_the_end", args, tmp, nproc),
    ]
    _RUNS[nproc] = InterruptedRun(run_dir, args, nproc, legs, s, kills)
    return _RUNS[nproc]


def write_started(run_dir: Path, step: int) -> Callable[[], bool]:
    return lambda: any(RunDir(run_dir).checkpoints.glob(f".step_{step:08d}.pt.tmp-*"))


_RUNS: dict[int, InterruptedRun] = {}
