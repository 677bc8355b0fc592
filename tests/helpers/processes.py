"""The one process harness: real trainer (or launcher) processes, started, hurt, killed, reaped.

`Job.start` runs the trainer as one process, as `torchrun` (its workers are found through
psutil), or as one process per rank with the torchrun variables set by hand, the way `srun`
starts one task per rank, so that each rank's exit status is its own. `Job.command` runs any
command the same way. Each process gets a session of its own and its stdout and stderr in
files under the test's folder.

A kill takes the whole job at once, as a scheduler or a lost node does: every process we
started, everything below it (torchrun's workers, wandb-core), all with SIGKILL, then reaped.
Every job is remembered until `kill_leftovers` (an autouse fixture in conftest.py), so a
failed test leaves no process behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from ae_dist.dist.group import free_port
from tests.helpers.commands import REPO, RUN_TIMEOUT, clean_env, run_dir_of, train_cmd, wait_for
from tests.helpers.run_files import logged_steps


@dataclass
class Job:
    """Processes we started: ``procs[i]`` is rank i (or torchrun, or the one process)."""

    procs: list[subprocess.Popen]
    outs: list[Path]
    errs: list[Path]
    run_dir: Path | None = None
    torchrun: bool = False
    exit_codes: list[int] = field(default_factory=list)

    @classmethod
    def start(cls, args: list[str], tmp: Path, nproc: int = 1, torchrun_args: tuple[str, ...] = (),
              srun_like: bool = False, env: dict[str, str] | None = None, name: str = "log", **extra: str) -> Job:
        """The trainer with ``args``; ``env`` (default `clean_env`) plus ``extra`` variables."""
        base = {**(env or clean_env(tmp)), **extra}
        if srun_like:
            port = str(free_port())
            envs = [{**base, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(nproc),
                     "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
                    for r in range(nproc)]
            commands = [train_cmd(args)] * nproc
        else:
            envs, commands = [base], [train_cmd(args, nproc, torchrun_args)]
        job = cls.command(commands, tmp, envs, name=name)
        job.run_dir, job.torchrun = run_dir_of(args), nproc > 1 and not srun_like
        return job

    @classmethod
    def command(cls, commands: list[list[str]], tmp: Path, envs: list[dict[str, str]] | None = None,
                name: str = "log", cwd: Path = REPO) -> Job:
        """One process per command, each in a session of its own, its output in ``tmp/<name><i>.out|.err``."""
        tmp.mkdir(parents=True, exist_ok=True)
        envs = envs or [clean_env(tmp)] * len(commands)
        job = cls([], [], [])
        STARTED.append(job)
        for i, (command, env) in enumerate(zip(commands, envs)):
            out = _fresh(tmp / f"{name}{i}.out")
            err = out.with_suffix(".err")
            with open(out, "w") as stdout, open(err, "w") as stderr:
                job.procs.append(subprocess.Popen(command, cwd=cwd, env=env, stdout=stdout, stderr=stderr,
                                                  start_new_session=True))
            job.outs.append(out)
            job.errs.append(err)
        return job

    def stdout(self, i: int = 0) -> str:
        return self.outs[i].read_text(errors="replace")

    def stderr(self, i: int = 0) -> str:
        return self.errs[i].read_text(errors="replace")

    def output(self, i: int = 0) -> str:
        """Process i's stdout, then its stderr."""
        return self.stdout(i) + self.stderr(i)

    def ranks(self) -> dict[int, int]:
        """rank -> pid of the worker processes (torchrun's children, or our own processes)."""
        if not self.torchrun:
            return {rank: proc.pid for rank, proc in enumerate(self.procs)}
        found = {}
        for child in psutil.Process(self.procs[0].pid).children():
            with contextlib.suppress(psutil.Error):
                found[int(child.environ()["RANK"])] = child.pid
        return found

    def wait_for_step(self, step: int) -> int:
        """Wait until metrics.jsonl holds a train record at ``step`` or later; the newest logged step."""
        def reached() -> int:
            self.check_running()
            return max(logged_steps(self.run_dir), default=0) >= step and max(logged_steps(self.run_dir))
        return int(wait_for(reached, RUN_TIMEOUT, f"step {step} in {self.run_dir}/metrics.jsonl"))

    def check_running(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                raise AssertionError(f"process {i} ended (exit {proc.returncode}) too early:\n{self.output(i)[-3000:]}")

    def signal(self, signum: int, ranks: list[int] | None = None, agent: bool = False) -> None:
        pids = self.ranks()
        targets = [pids[r] for r in (ranks if ranks is not None else sorted(pids))]
        if agent:
            targets.insert(0, self.procs[0].pid)
        for pid in targets:
            os.kill(pid, signum)

    def wait(self, timeout: float = RUN_TIMEOUT) -> list[int]:
        """Every process's exit status; whatever is left after ``timeout`` is killed."""
        try:
            self.exit_codes = [proc.wait(timeout) for proc in self.procs]
        finally:
            self.kill()
        return self.exit_codes

    def kill_when(self, condition: Callable[[], object], what: str, timeout: float = RUN_TIMEOUT) -> list[int]:
        """Kill the whole job as soon as ``condition`` holds; fail if the job ended before."""
        try:
            wait_for(lambda: condition() or any(proc.poll() is not None for proc in self.procs), timeout, what)
            ended = [i for i, proc in enumerate(self.procs) if proc.poll() is not None]
            if ended:
                raise AssertionError(f"process {ended[0]} ended (exit {self.procs[ended[0]].returncode}) before "
                                     f"{what}\n{self.stderr(ended[0])[-3000:]}")
        finally:
            self.kill()
        self.exit_codes = [proc.returncode for proc in self.procs]
        return self.exit_codes

    def kill(self) -> None:
        """SIGKILL every process we started and everything below them, at once; reap them all."""
        alive = [proc for proc in self.procs if proc.poll() is None]  # not yet reaped: the pid is still ours
        below = []
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                below += psutil.Process(proc.pid).children(recursive=True)
        for pid in [*(proc.pid for proc in alive), *(p.pid for p in below)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            proc.wait(30)  # Popen reaps its own child, so its returncode says -9
        psutil.wait_procs(below, timeout=30)


STARTED: list[Job] = []  # every job started, so that a failed test leaves no process behind


def kill_leftovers() -> None:
    while STARTED:
        STARTED.pop().kill()


def stop_process(pid: int) -> None:
    """SIGSTOP ``pid`` and wait until it is stopped."""
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED, 30, f"process {pid} to stop")


def _fresh(path: Path) -> Path:
    stem, n = path.stem, 1
    while path.exists() or path.with_suffix(".err").exists():
        path = path.with_name(f"{stem}-{n}{path.suffix}")
        n += 1
    return path
