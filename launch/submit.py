"""A cluster request plus a training config (or a sweep of them) -> submitit jobs, recorded and printed.

One task per GPU (or per CPU process) on each node; each task runs `launch.job.TrainJob`. An
elastic job (`--min-nodes`) is one task per node instead, each running torchrun (`launch.elastic`).
A sweep (`--sweep optim.lr=1e-3,3e-3`, several keys: their product) is one job array on
SLURM: each task trains in its own folder below `run.dir`, and all of them log to one
W&B group.
"""

from __future__ import annotations

import dataclasses
import functools
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

import submitit
import yaml
from submitit.core.utils import FailedJobError, FailedSubmissionError, JobPaths
from submitit.slurm.slurm import _make_sbatch_string as slurm_script

from ae_dist.config import Config
from ae_dist.errors import UsageError
from ae_dist.monitor.wandb_run import wandb_mode
from ae_dist.run.identity import wandb_group, wandb_run_id
from ae_dist.run.templates import preview_template, resolve_template
from launch import shell
from launch.job import TrainJob
from launch.jobs import Record, Run, finished, remember, states
from launch.request import Request, make_executor, submitit_parameters

if TYPE_CHECKING:
    from launch.elastic import ElasticSpec


def with_folders(runs: list[Config], make: bool = True) -> list[Config]:
    """A run.dir template ({wandb_run_id}, {date}, {time}) becomes one new folder per run, here, once: the job
    (and its requeues) gets the folder itself. ``make=False``: the names it would get, nothing created."""
    resolve = resolve_template if make else preview_template
    return [dataclasses.replace(config, run=dataclasses.replace(config.run, dir=resolve(config.run.dir)))
            for config in runs]


def job_folder(runs: list[Config]) -> Path:
    """submitit's folder (batch scripts, pickles, logs): in the run folder, or beside a sweep's."""
    return (Path(runs[0].run.dir) if len(runs) == 1 else Path(runs[0].run.dir).parent) / "submitit"


def executor_for(request: Request, runs: list[Config], elastic_spec: ElasticSpec | None, job_class: type = TrainJob
                 ) -> tuple[submitit.AutoExecutor, Callable[[Config], object], int]:
    """submitit's executor (it makes no folder until a job is submitted), what each run submits, tasks per run."""
    folder = job_folder(runs)
    shell.check_folder(str(folder), "run.dir")  # as absolute here, where SLURM and submitit will use it
    if elastic_spec is None:
        return make_executor(request, folder), job_class, request.world_size
    from launch import elastic

    return (elastic.executor(request, elastic_spec, folder, runs[0]),
            functools.partial(elastic.ElasticJob, spec=elastic_spec, nproc=request.ranks_per_node), request.nodes)


def preview(request: Request, runs: list[Config], elastic_spec: ElasticSpec | None = None,
            out: IO[str] | None = None) -> None:
    """What `submit` would do, with nothing submitted and nothing written: the runs, then the batch script
    (SLURM: submitit's own, as it would be written) or submitit's parameters (local, debug)."""
    out = out or sys.stdout  # looked up now: sys.stdout may have been replaced since import
    runs = with_folders(runs, make=False)
    tasks = request.nodes if elastic_spec else request.world_size
    kind = f"job array of {len(runs)} runs" if len(runs) > 1 else "job"
    print(f"dry run, nothing submitted: one {kind}, {request.describe()}, {tasks} task(s) per run", file=out)
    for config in runs:
        known = wandb_run_id(Path(config.run.dir), create=False)
        print(f"  run folder {config.run.dir} (W&B run id {known or 'new, made at submission'})", file=out)
    if request.executor != "slurm":  # submitit's local executor makes its folder when built: not built here
        print(f"submitit {request.executor} executor parameters:", file=out)
        print(yaml.safe_dump(submitit_parameters(request), sort_keys=True).rstrip(), file=out)
        return
    inner = executor_for(request, runs, elastic_spec)[0]._executor  # a SLURM executor makes no folder when built
    parameters = dict(inner.parameters) | ({"map_count": len(runs)} if len(runs) > 1 else {})
    # submitit has no public way to show a job's batch script before submitting it
    script = slurm_script(command=inner._submitit_command_str, folder=inner.folder, **parameters)
    print(f"sbatch script (submitit's, as it would be submitted from {inner.folder}):", file=out)
    print(script.rstrip(), file=out)


def submit(request: Request, runs: list[Config], elastic_spec: ElasticSpec | None = None, job_class: type = TrainJob
           ) -> tuple[Record, list[submitit.Job]]:
    """Submit one job (or one array), remember it in the registry, and return it. With ``elastic_spec``: one
    submitit task per node, each running torchrun (`launch.elastic`)."""
    runs = with_folders(runs)
    ids = [wandb_run_id(Path(config.run.dir)) for config in runs]
    executor, job_of, tasks = executor_for(request, runs, elastic_spec, job_class)
    folder = job_folder(runs)
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
        host=socket.gethostname(), request=request.describe(), tasks=request.world_size,
        wandb_project=runs[0].wandb.project,
        wandb_group=wandb_group(runs[0].wandb.group, {"SLURM_JOB_ID": main_id} if request.executor == "slurm" else {}),
        wandb_mode=wandb_mode(runs[0].wandb.mode),
        runs=[Run(job.job_id, config.run.dir, run_id,
                  [str(JobPaths(folder, job.job_id, task).stdout) for task in range(tasks)])
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

