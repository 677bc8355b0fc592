"""One node of an elastic job: its torchrun, watched; run by `python -m launch.elastic node` (one srun task per node).

    python -m launch.elastic node --min-nodes 1 -- --config configs/digits.yaml run.dir=runs/elastic

The node's launcher starts `torchrun --nnodes=MIN:MAX` (c10d rendezvous on the first host of
the job that has not failed, port `ae_dist.dist.job.master_port(job id)`), beats this host's
counter in the rendezvous store (so a silent rank whose host still beats is known to have
hung: `ae_dist.dist.liveness`), and every second looks in ``run.dir/incidents/`` for an incident of
this start of the job that names a hung host: then it ends torchrun (at once on that host),
so that the job step ends on every node and `launch.requeue` requeues the job without it.
Its exit status is the trainer's contract: 0 done, 75 stopped by a signal after a checkpoint
(torchrun itself exits 1 then), anything else a failure; whether the job is then requeued is
the batch script's `settle` to decide (`launch.requeue`), not a node's.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ae_dist.dist import incidents
from ae_dist.dist.job import Job, expand_hosts, master_port
from ae_dist.dist.preemption import STOP_SIGNALS, exit_status
from ae_dist.errors import EXIT_FAILED, UsageError
from ae_dist.run.folder import RunDir
from launch.requeue import say

SIGNALS_INTRODUCED = (2, 10)  # torch 2.10 added torchrun --signals-to-handle (pytorch/pytorch#160690)
FORWARDED = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2"  # torchrun's defaults, plus SLURM's warning signals
# c10d rendezvous: a dead agent is dropped after 3 missed 3-s keep-alives; once MIN nodes have
# joined, a round waits 10 s more for the others (so that every node of a fresh start joins it).
RDZV_CONF = "join_timeout=600,last_call_timeout=10,keep_alive_interval=3,keep_alive_max_attempt=3"
WATCH_S = 1.0  # how often a node's launcher looks for an incident that names a hung host
GRACE_S = 5.0  # torchrun's time to stop its workers after SIGTERM, before SIGKILL


def check_torch(version: str | None = None) -> None:
    """Refuse torch older than 2.10: its torchrun has no --signals-to-handle, and SIGUSR1/2 would kill it."""
    version = version or importlib.metadata.version("torch")
    found = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    if found < SIGNALS_INTRODUCED:
        raise UsageError(f"torch {version}'s torchrun has no --signals-to-handle (added in torch 2.10): SLURM's "
                         "pre-timeout signal would end torchrun before the workers checkpoint", "--min-nodes",
                         "install torch>=2.10 where the job runs, or submit without --min-nodes (one srun task per GPU)")


@dataclass(frozen=True)
class NodePlan:
    """One node's torchrun, from the job's environment."""

    job: str
    hosts: tuple[str, ...]  # the job's hosts that may train, first one hosts the rendezvous
    host: str
    min_nodes: int
    nproc: int
    max_restarts: int

    @property
    def rdzv(self) -> tuple[str, int]:
        return self.hosts[0], master_port(self.job)

    def torchrun(self, trainer_args: list[str]) -> list[str]:
        first, port = self.rdzv
        return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={min(self.min_nodes, len(self.hosts))}:"
                f"{len(self.hosts)}", f"--nproc-per-node={self.nproc}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={first}:{port}", f"--rdzv-id={self.job}", f"--rdzv-conf={RDZV_CONF}",
                f"--max-restarts={self.max_restarts}", f"--signals-to-handle={FORWARDED}", "-m", "ae_dist.train",
                *trainer_args]


def node_plan(min_nodes: int, nproc: int | None, max_restarts: int, skip: list[str],
              env: dict[str, str] | None = None) -> NodePlan:
    env = dict(os.environ if env is None else env)
    hosts = [h for h in expand_hosts(env.get("SLURM_JOB_NODELIST", "")) if h not in skip] or [socket.gethostname()]
    gpus = int(re.match(r"\d*", env.get("SLURM_GPUS_ON_NODE", "")).group(0) or 0)
    return NodePlan(env.get("SLURM_JOB_ID", "0"), tuple(hosts), socket.gethostname(), min_nodes,
                    nproc or gpus or 1, max_restarts)


class StopRecorder:
    """Stop signals reach every process of the job step (torchrun and its workers act on them); note the first."""

    def __init__(self) -> None:
        self.received = 0
        for sig in (*STOP_SIGNALS, signal.SIGHUP):
            signal.signal(sig, self._note)

    def _note(self, signum: int, frame: object) -> None:
        self.received = self.received or signum


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun's workers live in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def end_torchrun(proc: subprocess.Popen, hung_here: bool) -> None:
    """SIGTERM (torchrun stops its workers), SIGKILL after GRACE_S; at once on the hung host."""
    tree = descendants(proc.pid)
    if not hung_here:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(GRACE_S)
    for pid in [*descendants(proc.pid), *tree, proc.pid]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def run_node(plan: NodePlan, trainer_args: list[str], run_dir: Path, env: dict[str, str] | None = None) -> int:
    """This node's torchrun, watched; its exit status as the trainer's contract says (75: stopped after a checkpoint)."""
    check_torch()
    env = dict(os.environ if env is None else env)
    folder, job, restart = RunDir(run_dir).incidents, Job.from_env(env).id, env.get("SLURM_RESTART_COUNT", "0")
    if plan.host not in plan.hosts:
        say(f"{plan.host} failed earlier in job {plan.job} ({folder}): it does not join this start")
        return 0
    if plan.nproc > 1 and env.get("SLURM_CPUS_PER_TASK"):  # the task's cores, shared by its processes
        env["SLURM_CPUS_PER_TASK"] = str(max(1, int(env["SLURM_CPUS_PER_TASK"]) // plan.nproc))
    env["AE_DIST_HOST_BEATS"] = "{}:{}".format(*plan.rdzv)  # ae_dist.dist.liveness: where this launcher beats
    stop = StopRecorder()
    command = plan.torchrun(trainer_args)
    say(f"{plan.host} (job {plan.job}, restart {restart}): {shlex.join(command)}")
    started = time.time()
    proc = subprocess.Popen(command, env=env)
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # here only: a store that goes away is no news
    from ae_dist.dist.liveness import HostBeat  # torch: imported while torchrun starts

    beat = HostBeat(*plan.rdzv, plan.host)
    hung: list[str] = []
    try:
        while proc.poll() is None and not hung:
            time.sleep(WATCH_S)
            hung = incidents.failed_hosts(folder, job, restart, kinds=(incidents.HUNG, incidents.STALLED))
        if hung:
            end_torchrun(proc, plan.host in hung)
    finally:
        beat.stop()
    if hung:
        say(f"{', '.join(hung)} hung (stacks in {folder}): torchrun on {plan.host} ended so that the job is "
            "requeued without it")
        return EXIT_FAILED
    status = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    if status and stop.received:  # torchrun passed the signal on and exits 1 itself (its traceback above)
        say(stopped_line(plan.host, stop.received, RunDir(run_dir).checkpoints, started))
        return exit_status(stop.received)
    return status


# Why a stop signal reaches a node's launcher, as far as the signal tells.
WHY = {signal.SIGTERM: "SLURM ends the job step: a cancel, the time limit, or the job ending on another node",
       signal.SIGUSR1: "the pre-timeout or preemption warning", signal.SIGUSR2: "the pre-timeout or preemption warning",
       signal.SIGINT: "an interrupt", signal.SIGHUP: "the session that started it went away"}


def stopped_line(host: str, received: int, checkpoints: Path, started: float) -> str:
    """What happened when a stop signal ended this node's torchrun: the signal and its usual cause, the checkpoint
    the workers wrote since ``started`` (or none), the exit status. Whether the job is requeued is not this
    node's to say: the batch script's `settle` decides it after the step (if the script itself still runs)."""
    name = signal.Signals(received).name
    written = [path for path in checkpoints.glob("step_*.pt") if _mtime(path) >= started]
    saved = (f"the newest checkpoint of this start is {max(written).name}" if written else
             "no checkpoint was written since this start")
    return (f"torchrun on {host} stopped by signal {received} ({name}: {WHY.get(received, 'a stop signal')}); "
            f"{saved}; exit {exit_status(received)}")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
