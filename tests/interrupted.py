"""Runs of TINY killed with SIGKILL at chosen points, then rerun with the same command.

Shared by test_resume.py (final weights) and test_wandb.py (what W&B and metrics.jsonl
hold across the kills). Each run is made once per pytest session and kept in `_RUNS`.

A kill takes the whole job at once, as a scheduler or a lost node does: the command's
process, every process below it (torchrun's workers sit in sessions of their own) and
wandb-core, all with SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from conftest import REPO, TINY, clean_env, train_cmd, wait_for

RUN_TIMEOUT = 240  # seconds for one leg of a run on a busy 2-core machine

# Runs ae_dist.train as `python -m` does, but freezes the process (SIGSTOP) halfway through
# writing checkpoint step $FREEZE_AT_CHECKPOINT, so that a test can kill it inside the write.
FREEZE_IN_WRITE = textwrap.dedent('''\
    import io, os, runpy, signal

    import torch

    STEP = int(os.environ["FREEZE_AT_CHECKPOINT"])
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == STEP and ".tmp-" in str(getattr(f, "name", "")):
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[: buffer.tell() // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGSTOP)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save
    runpy.run_module("ae_dist.train", run_name="__main__", alter_sys=True)
''')


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


@dataclass
class InterruptedRun:
    run_dir: Path
    args: list[str]
    nproc: int
    legs: list[Leg]


def metrics(run_dir: Path) -> list[dict]:
    """The complete records of metrics.jsonl (the trainer may be writing the last line)."""
    path = run_dir / "metrics.jsonl"
    records = []
    for line in path.read_text().splitlines(keepends=True) if path.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL a process we started and everything below it, at once; reap them all."""
    try:
        below = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        below = []
    for pid in [proc.pid, *(p.pid for p in below)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(30)  # Popen reaps its own child, so its returncode says -9
    psutil.wait_procs(below, timeout=30)


def snapshot(name: str, run_dir: Path, returncode: int, logs: Path) -> Leg:
    folder = run_dir / "checkpoints"
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    return Leg(name, returncode, (logs / f"{name}.out").read_text(), (logs / f"{name}.err").read_text(),
               [n for n in names if n.startswith("step_")], [n for n in names if ".tmp-" in n], metrics(run_dir))


def launch(name: str, args: list[str], tmp: Path, nproc: int, kill_when: Callable[[], object] | None = None,
           what: str = "", script: Path | None = None, env: dict[str, str] | None = None) -> Leg:
    """Run the command; with ``kill_when``, SIGKILL the job as soon as it returns true."""
    command = train_cmd(args, nproc)
    if script is not None:  # the same command, through a wrapper script instead of `-m ae_dist.train`
        at = command.index("-m", 1 if nproc == 1 else command.index("--nproc_per_node=2"))
        command[at:at + 2] = [str(script)]
    run_dir = Path(next(a for a in args if a.startswith("run.dir=")).split("=", 1)[1])
    with open(tmp / f"{name}.out", "w") as out, open(tmp / f"{name}.err", "w") as err:
        proc = subprocess.Popen(command, cwd=REPO, env=env or clean_env(tmp), stdout=out, stderr=err,
                                start_new_session=True)
    try:
        if kill_when is None:
            proc.wait(RUN_TIMEOUT)
        else:
            wait_for(lambda: kill_when() or proc.poll() is not None, RUN_TIMEOUT, what)
            if proc.poll() is not None:
                raise AssertionError(f"{name}: the run ended (exit {proc.returncode}) before {what}\n"
                                     f"{(tmp / f'{name}.err').read_text()[-3000:]}")
            kill_job(proc)
    finally:
        if proc.poll() is None:
            kill_job(proc)
    return snapshot(name, run_dir, proc.returncode, tmp)


def checkpoint_exists(run_dir: Path, step: int) -> Callable[[], bool]:
    return lambda: (run_dir / "checkpoints" / f"step_{step:08d}.pt").exists()


def logged_step(run_dir: Path, at_least: int) -> Callable[[], bool]:
    return lambda: any(r["kind"] == "train" and r["step"] >= at_least for r in metrics(run_dir))


def write_started(run_dir: Path, step: int) -> Callable[[], bool]:
    return lambda: any((run_dir / "checkpoints").glob(f".step_{step:08d}.pt.tmp-*"))


_RUNS: dict[int, InterruptedRun] = {}


def interrupted_run(factory: pytest.TempPathFactory, nproc: int) -> InterruptedRun:
    """TINY (69 steps, checkpoints every 10 steps and at epoch ends 23, 46, 69) killed three
    times, then run to the end; every launch is the same command and the same run.dir.

    1. right after a checkpoint: as soon as step_00000010.pt exists (epoch 1);
    2. mid-epoch: as soon as metrics.jsonl holds step 25 (epoch 2, steps 24.. not saved);
    3. during a checkpoint write: the writer of step_00000050.pt is frozen halfway through
       the file and the job killed (epoch 3; the newest complete checkpoint is step 46);
    4. the same command again, to the end.
    """
    if nproc in _RUNS:
        return _RUNS[nproc]
    tmp = factory.mktemp(f"interrupted{nproc}")
    run_dir = tmp / "run"
    args = [*TINY, f"run.dir={run_dir}"]
    script = tmp / "freeze_in_write.py"
    script.write_text(FREEZE_IN_WRITE)
    legs = [
        launch("after_checkpoint", args, tmp, nproc, checkpoint_exists(run_dir, 10), "checkpoint step 10"),
        launch("mid_epoch", args, tmp, nproc, logged_step(run_dir, 25), "step 25 in metrics.jsonl"),
        launch("in_write", args, tmp, nproc, write_started(run_dir, 50), "the write of checkpoint step 50",
               script=script, env=clean_env(tmp, FREEZE_AT_CHECKPOINT="50")),
        launch("to_the_end", args, tmp, nproc),
    ]
    _RUNS[nproc] = InterruptedRun(run_dir, args, nproc, legs)
    return _RUNS[nproc]
