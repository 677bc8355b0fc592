"""A cluster request plus a training config (or a sweep of them) -> submitit jobs, recorded and printed.

One task per GPU (or per CPU process) on each node; each task runs `launch.job.TrainJob`.
A sweep (`--sweep optim.lr=1e-3,3e-3`, several keys: their product) is one job array on
SLURM: each task trains in its own folder below `run.dir`, and all of them log to one
W&B group.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import shlex
import socket
import time
from pathlib import Path
from typing import IO

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError, JobPaths

from ae_dist.config import Config, build_config, check_world_size, to_flat
from ae_dist.errors import UsageError
from ae_dist.run_dir import wandb_group, wandb_run_id
from ae_dist.wandb_run import wandb_mode
from launch import shell
from launch.job import TrainJob
from launch.jobs import Record, Run, finished, remember, states
from launch.request import Request, submitit_parameters


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
        shell.check_name(item, "--sweep")  # sweep values name folders and travel over SSH
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
    shell.check_folder(config.run.dir, "run.dir")
    config = _absolute(config)
    if not sweeps:
        check_world_size(config, world_size)
        return [config]
    root = Path(config.run.dir)
    group = config.wandb.group or f"sweep-{root.name}"
    runs: list[Config] = []
    by_values: dict[tuple, str] = {}
    by_folder: dict[str, str] = {}
    for point in itertools.product(*(values for _, values in sweeps)):
        chosen = dict(zip((key for key, _ in sweeps), point))
        text = ",".join(f"{key}={value}" for key, value in chosen.items())
        name = ",".join(f"{key}={re.sub(r'[^A-Za-z0-9._+-]', '_', value)}" for key, value in chosen.items())
        flat = to_flat(config) | chosen | {"run.dir": str(root / name), "wandb.group": group}
        run_config = build_config(flat, "--sweep")
        check_world_size(run_config, world_size)
        values = tuple(to_flat(run_config)[key] for key in chosen)
        for seen, key, what in ((by_values, values, "give the same config"), (by_folder, name, f"share the folder {name}")):
            if key in seen:
                raise UsageError(f"sweep points {shlex.quote(seen[key])} and {shlex.quote(text)} {what}", "--sweep",
                                 "list each value once, with names that differ in letters, digits or ._+-")
            seen[key] = text
        runs.append(run_config)
    return runs


def make_executor(request: Request, folder: Path) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, cluster=request.executor, slurm_max_num_timeout=request.max_requeues)
    executor.update_parameters(**submitit_parameters(request))
    return executor


def submit(request: Request, runs: list[Config]) -> tuple[Record, list[submitit.Job]]:
    """Submit one job (or one array), remember it in the registry, and return it."""
    root = Path(runs[0].run.dir) if len(runs) == 1 else Path(runs[0].run.dir).parent
    ids = [wandb_run_id(Path(config.run.dir)) for config in runs]
    folder = root / "submitit"
    shell.check_folder(str(folder), "run.dir")  # as absolute here, where SLURM and submitit will use it
    executor = make_executor(request, folder)
    try:
        if len(runs) == 1:
            jobs = [executor.submit(TrainJob(runs[0]))]
        else:
            with executor.batch():
                jobs = [executor.submit(TrainJob(config)) for config in runs]
    except (FailedJobError, FailedSubmissionError) as err:
        reason = next((line for line in reversed(str(err).splitlines()) if "error" in line.lower()), str(err))
        raise UsageError(f"the scheduler refused the job ({reason.strip()[:200]})", "sbatch",
                         "check the request (--partition, --account, --qos, ...) and that sinfo answers here") from None
    main_id = jobs[0].job_id.split("_")[0]
    record = Record(
        job_id=main_id, executor=request.executor, submitted=time.strftime("%Y-%m-%dT%H:%M:%S"),
        host=socket.gethostname(), request=request.describe(), tasks=request.world_size,
        wandb_project=runs[0].wandb.project,
        wandb_group=wandb_group(runs[0].wandb.group, {"SLURM_JOB_ID": main_id} if request.executor == "slurm" else {}),
        wandb_mode=wandb_mode(runs[0].wandb.mode),
        runs=[Run(job.job_id, config.run.dir, run_id,
                  [str(JobPaths(folder, job.job_id, task).stdout) for task in range(request.world_size)])
              for job, config, run_id in zip(jobs, runs, ids)])
    remember(record)
    return record, jobs


def describe(record: Record, out: IO[str], then: str = "python -m launch") -> None:
    """What was submitted and where to look: job id, run folders, W&B runs, logs, the next command (``then``:
    the launcher and its SSH flags, shell-quoted)."""
    kind = "job array" if len(record.runs) > 1 else "job"
    print(f"submitted {kind} {record.job_id} ({record.request})", file=out)
    group = f", group {record.wandb_group}" if record.wandb_group else ""
    for run in record.runs:
        print(f"  run {run.job_id}", file=out)
        print(f"    run folder  {run.run_dir}", file=out)
        print(f"    W&B run     {record.wandb_project}/{run.wandb_run_id} ({record.wandb_mode}{group})", file=out)
        print("    logs        " + ", ".join(f"{log} (rank {rank})" for rank, log in enumerate(run.logs)), file=out)
    job = shlex.quote(record.job_id)  # pasteable as printed: `then` is shell-quoted too
    print(f"  next          {then} status {job}    # likewise logs, cancel; fetch {job} --to DIR", file=out)
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

