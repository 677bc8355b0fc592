"""A cluster request plus a training config (or a sweep of them) -> submitit jobs, recorded and printed.

One task per GPU (or per CPU process) on each node; each task runs `launch.job.TrainJob`.
A sweep (`--sweep optim.lr=1e-3,3e-3`, several keys: their product) is one job array on
SLURM: each task trains in its own folder below `run.dir`, and all of them log to one
W&B group.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError, JobPaths

from ae_dist.config import Config, build_config, check_world_size, to_flat
from ae_dist.errors import UsageError
from ae_dist.run_dir import wandb_group, wandb_run_id
from ae_dist.wandb_run import wandb_mode
from launch.job import TrainJob
from launch.jobs import Record, Run, finished, remember, states
from launch.profiles import EXECUTORS

if TYPE_CHECKING:
    from launch.elastic import ElasticSpec


@dataclass(frozen=True)
class Request:
    """What to ask the scheduler for; `world_size` ranks per run."""

    executor: str = "slurm"
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    time_min: int = 60
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    signal_delay_s: int = 120
    max_requeues: int = 3
    setup: tuple[str, ...] = ()
    job_name: str = "ae-dist"

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node

    def describe(self) -> str:
        parts = [f"{self.nodes} node(s) x {self.tasks_per_node} task(s)"]
        if self.gpus_per_node:
            parts.append(f"{self.gpus_per_node} GPU(s) per node")
        parts += [f"{name} {value}" for name, value in (("partition", self.partition), ("account", self.account),
                                                         ("qos", self.qos)) if value]
        if self.executor == "slurm":
            parts.append(f"time {self.time_min} min")
        return f"{self.executor}: " + ", ".join(parts)


def parse_time(value: str | int) -> int:
    """Minutes from SLURM's formats: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
    text = str(value).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not match:
        raise UsageError(f"invalid time {text!r}", "--time", "give minutes, HH:MM:SS or D-HH:MM:SS")
    days, first, second, third = (int(g) if g else None for g in match.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = days * 86400 + first * 3600 + (second or 0) * 60 + (third or 0)
    elif third is not None:  # HH:MM:SS
        seconds = first * 3600 + second * 60 + third
    else:  # MM[:SS]
        seconds = first * 60 + (second or 0)
    if seconds < 60:
        raise UsageError(f"time limit {text!r} is under a minute", "--time", "give at least 1 (minute)")
    return -(-seconds // 60)


def check_request(request: Request, scheduler_here: bool = True) -> None:
    """Impossible requests end here, before anything is submitted (or shipped to a login node)."""
    if request.executor not in EXECUTORS:
        raise UsageError(f"unknown executor {request.executor!r}", "--executor", f"use one of {' | '.join(EXECUTORS)}")
    for name, value, least in (("--nodes", request.nodes, 1), ("--tasks-per-node", request.tasks_per_node, 1),
                               ("--gpus-per-node", request.gpus_per_node, 0), ("--cpus-per-task", request.cpus_per_task, 1),
                               ("--signal-delay-s", request.signal_delay_s, 0), ("--max-requeues", request.max_requeues, 0)):
        if value is not None and value < least:
            raise UsageError(f"{name} is {value}", name, f"use an integer >= {least}")
    if request.gpus_per_node and request.tasks_per_node != request.gpus_per_node:
        raise UsageError(f"{request.tasks_per_node} tasks per node for {request.gpus_per_node} GPUs per node",
                         "--tasks-per-node", "leave it out: one task per GPU")
    if request.executor == "local" and request.nodes != 1:
        raise UsageError(f"the local executor runs on this machine only, not on {request.nodes} nodes", "--nodes",
                         "use --nodes 1, or --executor slurm")
    if request.executor == "debug" and request.world_size != 1:
        raise UsageError("the debug executor runs one process inside this one", "--tasks-per-node",
                         "use --executor local for several processes")
    if request.executor == "slurm" and scheduler_here:
        _check_slurm(request)


def _check_slurm(request: Request) -> None:
    if not shutil.which("sbatch"):
        raise UsageError("no sbatch on this machine and no remote host", "--remote",
                         "submit from a login node, pass --remote HOST (or a --cluster profile with a host), "
                         "or use --executor local")
    if request.partition is None:
        return
    result = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=60)
    if result.returncode:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UsageError(f"sinfo failed ({reason})", "--partition", "check that SLURM answers here (sinfo)")
    partitions = sorted(set(result.stdout.split()))
    if request.partition not in partitions:
        raise UsageError(f"partition {request.partition!r} is not listed by sinfo", "--partition",
                         f"use one of {', '.join(partitions) or '(none)'}")


def split_values(text: str) -> list[str]:
    """'1e-3,3e-3' -> ['1e-3', '3e-3']; commas inside brackets stay: '[128,64],[64,32]'."""
    values, depth, current = [], 0, ""
    for char in text:
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    return [v.strip() for v in [*values, current]]


def parse_sweeps(items: list[str]) -> list[tuple[str, list[str]]]:
    sweeps: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, text = item.partition("=")
        values = split_values(text) if sep else []
        if not key or not values or any(not v for v in values):
            raise UsageError("sweep is not key=value,value", item, "write e.g. --sweep optim.lr=1e-3,3e-3")
        if key in (k for k, _ in sweeps):
            raise UsageError("key swept twice", key, "give each key one --sweep with all its values")
        if len(set(values)) != len(values):
            raise UsageError("a value appears twice in the sweep", item, "list each value once")
        sweeps.append((key, values))
    return sweeps


def _absolute(config: Config) -> Config:
    """Paths resolved against the submitting folder, so every task writes to the same place."""
    train = config.train
    if train.resume not in ("auto", "never"):
        train = dataclasses.replace(train, resume=os.path.abspath(train.resume))
    return dataclasses.replace(config, train=train,
                               run=dataclasses.replace(config.run, dir=os.path.abspath(config.run.dir)),
                               data=dataclasses.replace(config.data, root=os.path.abspath(config.data.root)))


def plan_runs(config: Config, sweeps: list[tuple[str, list[str]]], world_size: int) -> list[Config]:
    """One config per run: the config itself, or one per point of the sweep (own run.dir, one W&B group)."""
    config = _absolute(config)
    if not sweeps:
        check_world_size(config, world_size)
        return [config]
    root = Path(config.run.dir)
    group = config.wandb.group or f"sweep-{root.name}"
    runs = []
    for point in itertools.product(*(values for _, values in sweeps)):
        chosen = dict(zip((key for key, _ in sweeps), point))
        name = ",".join(f"{key}={re.sub(r'[^A-Za-z0-9._+-]', '_', value)}" for key, value in chosen.items())
        flat = to_flat(config) | chosen | {"run.dir": str(root / name), "wandb.group": group}
        run_config = build_config(flat, "--sweep")
        check_world_size(run_config, world_size)
        runs.append(run_config)
    return runs


def make_executor(request: Request, folder: Path) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, cluster=request.executor, slurm_max_num_timeout=request.max_requeues)
    params: dict[str, object] = {"name": request.job_name, "timeout_min": request.time_min, "nodes": request.nodes,
                                 "tasks_per_node": request.tasks_per_node, "stderr_to_stdout": True}
    if request.gpus_per_node:
        params["gpus_per_node"] = request.gpus_per_node
    if request.cpus_per_task:
        params["cpus_per_task"] = request.cpus_per_task
    if request.mem_gb:
        params["mem_gb"] = request.mem_gb
    if request.executor == "slurm":
        params.update(slurm_signal_delay_s=request.signal_delay_s, slurm_additional_parameters={"requeue": True})
        params.update({f"slurm_{name}": value for name, value in (
            ("partition", request.partition), ("account", request.account), ("qos", request.qos),
            ("constraint", request.constraint)) if value})
        if request.setup:
            params["slurm_setup"] = list(request.setup)
    executor.update_parameters(**params)
    return executor


def submit(request: Request, runs: list[Config], elastic_spec: ElasticSpec | None = None
           ) -> tuple[Record, list[submitit.Job]]:
    """Submit one job (or one array), remember it in the registry, and return it."""
    root = Path(runs[0].run.dir) if len(runs) == 1 else Path(runs[0].run.dir).parent
    ids = [wandb_run_id(Path(config.run.dir)) for config in runs]
    folder = root / "submitit"
    if elastic_spec is None:
        executor, job_of, tasks = make_executor(request, folder), TrainJob, request.world_size
    else:  # one submitit task per node, each running torchrun (launch/elastic.py)
        from launch import elastic

        executor, tasks = elastic.executor(request, elastic_spec, folder, runs[0]), request.nodes
        job_of = functools.partial(elastic.ElasticJob, spec=elastic_spec, nproc=request.tasks_per_node)
    try:
        if len(runs) == 1:
            jobs = [executor.submit(job_of(runs[0]))]
        else:
            with executor.batch():
                jobs = [executor.submit(job_of(config)) for config in runs]
    except (FailedJobError, FailedSubmissionError) as err:
        reason = next((line for line in reversed(str(err).splitlines()) if "error" in line.lower()), str(err))
        raise UsageError(f"the scheduler refused the job ({reason.strip()[:200]})", "sbatch",
                         "check the request (--partition, --account, --qos, ...) and that sinfo answers here") from None
    main_id = jobs[0].job_id.split("_")[0]
    record = Record(
        job_id=main_id, executor=request.executor, submitted=time.strftime("%Y-%m-%dT%H:%M:%S"),
        host=socket.gethostname(), tasks=request.world_size,
        request=request.describe() + (f", elastic: {elastic_spec.min_nodes}-{request.nodes} nodes" if elastic_spec else ""),
        wandb_project=runs[0].wandb.project,
        wandb_group=wandb_group(runs[0].wandb.group, {"SLURM_JOB_ID": main_id} if request.executor == "slurm" else {}),
        wandb_mode=wandb_mode(runs[0].wandb.mode),
        runs=[Run(job.job_id, config.run.dir, run_id,
                  [str(JobPaths(folder, job.job_id, task).stdout) for task in range(tasks)])
              for job, config, run_id in zip(jobs, runs, ids)])
    remember(record)
    return record, jobs


def describe(record: Record, out: IO[str], then: str = "python -m launch") -> None:
    """What was submitted and where to look: job id, run folders, W&B runs, logs, next commands."""
    kind = "job array" if len(record.runs) > 1 else "job"
    print(f"submitted {kind} {record.job_id} ({record.request})", file=out)
    group = f", group {record.wandb_group}" if record.wandb_group else ""
    for run in record.runs:
        print(f"  run {run.job_id}", file=out)
        print(f"    run folder  {run.run_dir}", file=out)
        print(f"    W&B run     {record.wandb_project}/{run.wandb_run_id} ({record.wandb_mode}{group})", file=out)
        print("    logs        " + ", ".join(f"{log} (rank {rank})" for rank, log in enumerate(run.logs)), file=out)
    print(f"  next          {then} status|logs|cancel {record.job_id}; {then} fetch {record.job_id} --to DIR", file=out)
    out.flush()


def wait(record: Record, jobs: list[submitit.Job], interval_s: float = 2.0) -> bool:
    """Block until the job ends (requeues included); True when every run completed."""
    if record.executor == "debug":
        for job in jobs:
            job.result()  # runs the training here, in this process
    elif record.executor == "local":
        for job in jobs:
            while not job.done():
                time.sleep(interval_s)
    else:
        while not finished(record):
            time.sleep(interval_s)
    return all(state == "COMPLETED" for state in states(record).values())

