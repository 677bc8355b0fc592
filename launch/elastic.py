"""Elastic SLURM jobs: one torchrun per node, c10d rendezvous on the first node; a lost node shrinks the job.

    python -m launch --nodes 4 --min-nodes 2 --gpus-per-node 8 --config configs/default.yaml   # submitit
    AE_DIST_MIN_NODES=2 sbatch --nodes=2-4 --gpus-per-node=8 slurm/train-elastic.sbatch --config configs/default.yaml
    python -m launch.elastic node --min-nodes 2 -- --config configs/default.yaml     # what each node runs (srun)
    python -m launch.elastic settle --status 75 -- --config configs/default.yaml    # after srun: finish or requeue

The job is submitted with ``--nodes=MIN-MAX --no-kill``: SLURM keeps it when a node dies. On
every node, one `torchrun --nnodes=MIN:MAX` (torch's own elastic agent) starts the trainer
processes; when a node's processes die or its network goes, the agents on the other nodes
restart theirs (``--max-restarts``) at the smaller world size, and the trainer resumes from
the newest checkpoint with the same global batch and sample order. torchrun's
``--signals-to-handle`` (torch >= 2.10) passes SLURM's pre-timeout signal on to the trainer,
which checkpoints and exits 75; the job is then requeued. A rank that hangs is named by its
peers, who leave their stacks in ``run.dir/incidents/``; the step ends on every node, and the
job is requeued without the hung host (`launch.requeue`).
"""

from __future__ import annotations

import argparse
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from ae_dist import incidents
from ae_dist.config import Config, check_world_size, dump_yaml, load_config
from ae_dist.errors import EXIT_FAILED, UsageError, reporting
from ae_dist.lease import job_id
from ae_dist.preemption import STOP_SIGNALS, exit_status
from ae_dist.run_dir import RunDir
from launch.requeue import expand_hosts, say, settle

if TYPE_CHECKING:
    import submitit

    from launch.submit import Request

SIGNALS_INTRODUCED = (2, 10)  # torch 2.10 added torchrun --signals-to-handle (pytorch/pytorch#160690)
FORWARDED = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2"  # torchrun's defaults, plus SLURM's warning signals
# c10d rendezvous: a dead agent is dropped after 3 missed 3-s keep-alives; once MIN nodes have
# joined, a round waits LAST_CALL_S more for the others.
RDZV_CONF = "join_timeout=600,last_call_timeout=10,keep_alive_interval=3,keep_alive_max_attempt=3"
WATCH_S = 1.0  # how often a node's launcher looks for an incident that names a hung host
GRACE_S = 5.0  # torchrun's time to stop its workers after SIGTERM, before SIGKILL


@dataclass(frozen=True)
class ElasticSpec:
    """The elastic part of a request: --min-nodes and what a failure may cost."""

    min_nodes: int
    max_restarts: int = 3  # torchrun restarts of the worker group on each node, per start of the job
    max_node_failures: int = 2  # hosts a job may lose (and exclude) before a requeue is refused
    exclude: tuple[str, ...] = ()  # the user's hosts never to use


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
        from ae_dist.dist import master_port  # torch: not for --help

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
    folder, job, restart = RunDir(run_dir).incidents, job_id(env), env.get("SLURM_RESTART_COUNT", "0")
    if plan.host not in plan.hosts:
        say(f"{plan.host} failed earlier in job {plan.job} ({folder}): it does not join this start")
        return 0
    if plan.nproc > 1 and env.get("SLURM_CPUS_PER_TASK"):  # the task's cores, shared by its processes
        env["SLURM_CPUS_PER_TASK"] = str(max(1, int(env["SLURM_CPUS_PER_TASK"]) // plan.nproc))
    env["AE_DIST_HOST_BEATS"] = "{}:{}".format(*plan.rdzv)  # ae_dist.liveness: where this launcher beats
    stop = StopRecorder()
    command = plan.torchrun(trainer_args)
    say(f"{plan.host} (job {plan.job}, restart {restart}): {shlex.join(command)}")
    proc = subprocess.Popen(command, env=env)
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # here only: a store that goes away is no news
    from ae_dist.liveness import HostBeat  # torch: imported while torchrun starts

    beat = HostBeat(*plan.rdzv, plan.host)
    hung: list[str] = []
    try:
        while proc.poll() is None and not hung:
            time.sleep(WATCH_S)
            hung = incidents.failed_hosts(folder, job, restart, kinds=(incidents.HUNG,))
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
        say(f"torchrun on {plan.host} stopped by signal {stop.received}: the workers checkpointed; exit "
            f"{exit_status(stop.received)}, the job is requeued")
        return exit_status(stop.received)
    return status


class ElasticJob:
    """What submitit runs once per node of an elastic job: `run_node` on the resolved config."""

    def __init__(self, config: Config, spec: ElasticSpec, nproc: int):
        self.config_yaml, self.run_dir, self.spec, self.nproc = dump_yaml(config), config.run.dir, spec, nproc

    def __call__(self) -> dict[str, object]:
        import submitit

        paths = submitit.JobEnvironment().paths
        folder = incidents_of(self.run_dir)
        plan = node_plan(self.spec.min_nodes, self.nproc, self.spec.max_restarts,
                         incidents.failed_hosts(folder, job_id()))
        config_file = paths.folder / f"{plan.job}_{plan.host}_config.yaml"  # re-read by each torchrun restart
        config_file.write_text(self.config_yaml, encoding="utf-8")
        status = run_node(plan, ["--config", str(config_file)], Path(self.run_dir))
        if status:
            raise SystemExit(status)
        return {"status": "completed", "run_dir": self.run_dir, "host": plan.host}


def incidents_of(run_dir: str | Path) -> Path:
    return RunDir(Path(run_dir)).incidents


def executor(request: Request, spec: ElasticSpec, folder: Path, config: Config) -> submitit.AutoExecutor:
    """submitit's executor for an elastic job: one task per node, --nodes=MIN-MAX --no-kill, settled after srun."""
    from launch.submit import make_executor

    per_node = replace(request, tasks_per_node=1, cpus_per_task=request.cpus_per_task and
                       request.cpus_per_task * request.tasks_per_node)
    made = make_executor(per_node, folder)
    # With --ntasks-per-node, SLURM (22.05) starts a --nodes=MIN-MAX job on MIN nodes even when MAX are idle.
    made._executor.parameters.pop("ntasks_per_node", None)
    extra: dict[str, object] = {"requeue": True, "nodes": f"{spec.min_nodes}-{request.nodes}", "no-kill": True}
    if spec.exclude:
        extra["exclude"] = ",".join(spec.exclude)
    settle_line = shlex.join([sys.executable, "-m", "launch.elastic", "settle", "--run-dir", config.run.dir,
                              "--max-node-failures", str(spec.max_node_failures),
                              "--max-requeues", str(request.max_requeues)])
    made.update_parameters(slurm_additional_parameters=extra, slurm_teardown=[f"{settle_line} --status $?"],
                           slurm_srun_args=["--ntasks-per-node=1", "--no-kill", "--kill-on-bad-exit=0"])
    return made


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("elastic jobs: a lost node shrinks the job (one torchrun per node)")
    group.add_argument("--min-nodes", type=int, help="fewest nodes to train on: submits --nodes=MIN-MAX --no-kill")
    group.add_argument("--max-restarts", type=int, help="torchrun restarts of the workers on each node (default 3)")
    group.add_argument("--max-node-failures", type=int, help="hosts that may fail before a requeue is refused (default 2)")
    group.add_argument("--exclude", help="hosts the job never uses, comma-separated; hosts that fail are added on requeue")


def spec_of(args: argparse.Namespace, request: Request, config: Config, sweeps: int, torch_here: bool = True
            ) -> ElasticSpec | None:
    """The elastic flags as a checked spec; None without --min-nodes. Impossible requests end here."""
    given = {k: getattr(args, k) for k in ("max_restarts", "max_node_failures", "exclude") if getattr(args, k) is not None}
    if args.min_nodes is None:
        if given:
            flag = "--" + next(iter(given)).replace("_", "-")
            raise UsageError(f"{flag} is for elastic jobs", flag, "add --min-nodes N (the fewest nodes to train on)")
        return None
    exclude = tuple(h.strip() for h in given.pop("exclude", "").split(",") if h.strip())
    spec = ElasticSpec(args.min_nodes, exclude=exclude, **given)
    for name, value, least in (("--min-nodes", spec.min_nodes, 1), ("--max-restarts", spec.max_restarts, 0),
                               ("--max-node-failures", spec.max_node_failures, 0)):
        if value < least:
            raise UsageError(f"{name} is {value}", name, f"use an integer >= {least}")
    if spec.min_nodes > request.nodes:
        raise UsageError(f"--min-nodes {spec.min_nodes} is more than --nodes {request.nodes}", "--min-nodes",
                         f"use at most {request.nodes} (--nodes is the most nodes the job uses)")
    if request.executor != "slurm" or sweeps:
        raise UsageError("elastic jobs (--min-nodes) are one SLURM job on several nodes", "--sweep" if sweeps else
                         "--executor", "use --executor slurm and one run per submission")
    bad = [h for h in spec.exclude if not re.fullmatch(r"[A-Za-z0-9._\[\]-]+", h)]
    if bad:
        raise UsageError(f"not a host name {bad[0]!r}", "--exclude", "give host names, comma-separated")
    if torch_here:
        check_torch()
    for nodes in range(spec.min_nodes, request.nodes + 1):  # every world size the job may shrink to
        check_world_size(config, nodes * request.tasks_per_node)
    return spec


def flags_of(spec: ElasticSpec | None) -> list[str]:
    """The spec as flags again, for the launcher on the login node."""
    if spec is None:
        return []
    return ["--min-nodes", str(spec.min_nodes), "--max-restarts", str(spec.max_restarts), "--max-node-failures",
            str(spec.max_node_failures), *(["--exclude", ",".join(spec.exclude)] if spec.exclude else [])]


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.prog, f"see {self.prog} --help")


def trainer_run_dir(run_dir: str | None, trainer_args: list[str]) -> Path:
    """--run-dir, else the run folder the trainer's own arguments (--config, key=value) name."""
    if run_dir:
        return Path(run_dir)
    config_path, rest = None, list(trainer_args)
    for at, arg in enumerate(rest):
        if arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
        elif arg == "--config" and at + 1 < len(rest):
            config_path = rest[at + 1]
    return Path(load_config(config_path, [a for a in rest if "=" in a and not a.startswith("-")]).run.dir)


@reporting
def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m launch.elastic", description=__doc__, epilog="-- TRAINER ARGS: as for ae_dist.train",
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("node", "settle"))
    parser.add_argument("--min-nodes", type=int, default=1, help="node: fewest nodes the job trains on (1)")
    parser.add_argument("--nproc-per-node", type=int, help="node: trainer processes per node (GPUs on the node, else 1)")
    parser.add_argument("--max-restarts", type=int, default=3, help="node: torchrun restarts of the workers (3)")
    parser.add_argument("--status", type=int, default=0, help="settle: the exit status of the job step (srun)")
    parser.add_argument("--run-dir", help="the run folder (default: from the trainer's arguments)")
    parser.add_argument("--max-node-failures", type=int, default=2, help="settle: hosts that may fail (2)")
    parser.add_argument("--max-requeues", type=int, help="settle: requeues allowed (default: no limit)")
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args, trainer_args = parser.parse_args(argv[:split]), argv[split + 1:]  # after --: the trainer's arguments
    run_dir = trainer_run_dir(args.run_dir, trainer_args)  # a bad config ends here, before torchrun starts
    if args.command == "settle":
        return settle(args.status, run_dir, args.max_node_failures, args.max_requeues)
    skip = incidents.failed_hosts(RunDir(run_dir).incidents, job_id())
    plan = node_plan(args.min_nodes, args.nproc_per_node, args.max_restarts, skip)
    return run_node(plan, trainer_args, run_dir)


if __name__ == "__main__":
    sys.exit(main())
