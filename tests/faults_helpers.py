"""Helpers for the fault-injection tests: start real trainer processes, hurt them, look.

`Job` starts the trainer as one process, as `torchrun` (its workers are found through
psutil), or as one process per rank with the torchrun variables set by hand, the way
`srun` starts one task per rank, so that each rank's exit status is its own.

Each test may add a row to the fault table: with AE_DIST_FAULT_REPORT=PATH in the
environment, `report` appends one JSON line to PATH (benchmarks/faults_table.py prints them).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
from conftest import PYTHON, REPO, clean_env, train_cmd, wait_for

from ae_dist.checkpoint import NAME, list_checkpoints, read
from ae_dist.dist import free_port

RUN_TIMEOUT = 240  # seconds for one run of TINY on a busy 2-core machine
TOTAL_STEPS = 69  # TINY: 3 epochs of 23 steps

# The trainer, with the batch of one global step poisoned with a NaN pixel (POISON_STEP, 1-based).
POISON_BATCH = """\
import os, runpy

from ae_dist import data

POISON_STEP = int(os.environ["POISON_STEP"])
real_epoch = data.EpochBatches.epoch


def epoch(self, epoch, start=0):
    for k, images in enumerate(real_epoch(self, epoch, start), start):
        if epoch * self.steps + k + 1 == POISON_STEP:
            images = images.clone()
            images[0, 0, 0, 0] = float("nan")
        yield images


data.EpochBatches.epoch = epoch
runpy.run_module("ae_dist.train", run_name="__main__", alter_sys=True)
"""


@dataclass
class Job:
    """Trainer processes we started: ``procs[i]`` is rank i (or torchrun, or the one process)."""

    procs: list[subprocess.Popen]
    logs: list[Path]
    run_dir: Path
    torchrun: bool = False
    exit_codes: list[int] = field(default_factory=list)

    @classmethod
    def start(cls, args: list[str], tmp: Path, nproc: int = 1, torchrun_args: tuple[str, ...] = (),
              srun_like: bool = False, command: list[str] | None = None, **env: str) -> Job:
        run_dir = Path(next(a for a in args if a.startswith("run.dir=")).split("=", 1)[1])
        tmp.mkdir(parents=True, exist_ok=True)
        if srun_like:
            port = str(free_port())
            envs = [clean_env(tmp, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
                              MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **env) for r in range(nproc)]
            commands = [train_cmd(args)] * nproc
        else:
            envs = [clean_env(tmp, **env)]
            commands = [command or train_cmd(args, nproc, torchrun_args)]
        procs, logs = [], []
        for i, (cmd, proc_env) in enumerate(zip(commands, envs)):
            log = _fresh(tmp / f"log{i}.txt")
            with open(log, "w") as out:
                procs.append(subprocess.Popen(cmd, cwd=REPO, env=proc_env, stdout=out, stderr=subprocess.STDOUT))
            logs.append(log)
        job = cls(procs, logs, run_dir, torchrun=nproc > 1 and not srun_like)
        STARTED.append(job)
        return job

    def ranks(self) -> dict[int, int]:
        """rank -> pid of the worker processes (torchrun's children, or our own processes)."""
        if not self.torchrun:
            return {rank: proc.pid for rank, proc in enumerate(self.procs)}
        found = {}
        for child in psutil.Process(self.procs[0].pid).children():
            with contextlib.suppress(psutil.Error):
                found[int(child.environ()["RANK"])] = child.pid
        return found

    def output(self, i: int = 0) -> str:
        return self.logs[i].read_text(errors="replace")

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
        try:
            self.exit_codes = [proc.wait(timeout) for proc in self.procs]
        finally:
            self.kill()
        return self.exit_codes

    def kill(self) -> None:
        """SIGKILL whatever is left of the processes we started, workers first; reap them."""
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                below = psutil.Process(proc.pid).children(recursive=True)
                for child in below:
                    with contextlib.suppress(psutil.Error):
                        child.kill()
                psutil.wait_procs(below, timeout=30)
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)


STARTED: list[Job] = []  # every job started, so that a failed test leaves no process behind


def kill_leftovers() -> None:
    while STARTED:
        STARTED.pop().kill()


def _fresh(path: Path) -> Path:
    stem, n = path.stem, 1
    while path.exists():
        path = path.with_name(f"{stem}-{n}{path.suffix}")
        n += 1
    return path


def python_script(source: str, tmp: Path, args: list[str]) -> list[str]:
    script = tmp / "trainer_wrapper.py"
    script.write_text(source)
    return [PYTHON, str(script), *args]


def metrics(run_dir: Path) -> list[dict]:
    """The complete records of metrics.jsonl (the trainer may be writing its last line)."""
    path = run_dir / "metrics.jsonl"
    records = []
    for line in path.read_text().splitlines(keepends=True) if path.exists() else []:
        if not line.endswith("\n"):
            break
        records.append(json.loads(line))
    return records


def logged_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in metrics(run_dir) if r["kind"] == "train"]


def checkpoint_steps(run_dir: Path) -> list[int]:
    return [int(NAME.match(p.name)[1]) for p in list_checkpoints(run_dir / "checkpoints")]


def leftovers(run_dir: Path) -> list[str]:
    """Temporary files a write left behind anywhere in the run folder (W&B's own folder aside)."""
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*.tmp*") if "wandb" not in p.parts)


def finite_checkpoint(path: Path) -> dict:
    """Load with weights_only=True; assert every tensor of the model and optimizer is finite."""
    payload = read(path)
    tensors = [*payload["model"].values(),
               *(t for state in payload["optimizer"]["state"].values() for t in state.values() if torch.is_tensor(t))]
    assert tensors and all(torch.isfinite(t).all() for t in tensors), f"{path} holds NaN/Inf"
    return payload


def metrics_intact(run_dir: Path, log_every: int, total: int = TOTAL_STEPS, epochs: int = 3) -> str:
    """Assert metrics.jsonl holds each expected record once, steps only increasing; say what it holds."""
    records = metrics(run_dir)
    keys = [(r["step"], r["kind"]) for r in records]
    assert keys == sorted(keys, key=lambda k: (k[0], k[1] == "epoch")) and len(set(keys)) == len(keys), keys
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(log_every, total + 1, log_every))
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == list(range(1, epochs + 1))
    return f"none: metrics.jsonl complete ({len(records)} records, no gap, no duplicate)"


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


def one_clear_line(text: str) -> str:
    """The output carries exactly one ``error:`` line and no traceback; return that line."""
    assert "Traceback" not in text, text[-4000:]
    lines = error_lines(text)
    assert len(lines) == 1, text[-4000:]
    return lines[0]


@contextlib.contextmanager
def tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A small RAM file system of its own (needs root, as in CI); unmounted afterwards."""
    mount_point.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"cannot mount a tmpfs (the disk-full test needs root): {done.stderr}"
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill_disk(mount_point: Path, leave_bytes: int) -> Path:
    """Take all free space of the file system but ``leave_bytes``."""
    stats = os.statvfs(mount_point)
    filler = mount_point / "filler"
    with open(filler, "wb") as fh:
        os.posix_fallocate(fh.fileno(), 0, max(1, stats.f_bavail * stats.f_frsize - leave_bytes))
    return filler


def stop_process(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED, 30, f"process {pid} to stop")


def report(fault: str, injected: str, outcome: str, work_lost: str, data_lost: str) -> None:
    """One row of the README's fault table, when AE_DIST_FAULT_REPORT names a file."""
    path = os.environ.get("AE_DIST_FAULT_REPORT")
    if path:
        row = {"fault": fault, "injected": injected, "outcome": outcome, "work_lost": work_lost, "data_lost": data_lost}
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
