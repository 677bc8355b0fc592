"""A cluster request plus a training config (or a sweep of them) -> submitit jobs, recorded and printed.

One task per GPU (or per CPU process) on each node; each task runs `launch.job.TrainJob`.
A sweep (`--sweep optim.lr=1e-3,3e-3`, several keys: their product) is one job array on
SLURM: each task trains in its own folder below `run.dir`, and all of them log to one
W&B group.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from pathlib import Path

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError, JobPaths

from ae_dist.config import Config
from ae_dist.errors import UsageError
from ae_dist.run_dir import resolve_template, wandb_group, wandb_run_id
from ae_dist.wandb_run import wandb_mode
from launch import shell
from launch.job import TrainJob
from launch.jobs import Record, Run, finished, remember, states
from launch.request import Request, submitit_parameters


def make_executor(request: Request, folder: Path) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, cluster=request.executor, slurm_max_num_timeout=request.max_requeues)
    executor.update_parameters(**submitit_parameters(request))
    return executor


def submit(request: Request, runs: list[Config]) -> tuple[Record, list[submitit.Job]]:
    """Submit one job (or one array), remember it in the registry, and return it."""
    # a run.dir template ({wandb_run_id}, {date}, {time}) becomes one new folder per run, here, once:
    # the job (and its requeues) gets the folder itself
    runs = [dataclasses.replace(config, run=dataclasses.replace(config.run, dir=resolve_template(config.run.dir)))
            for config in runs]
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

