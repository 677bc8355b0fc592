"""Impossible or unsafe requests end here, before anything is submitted or shipped to a login node.

    python -m launch --executor local --nodes 2 ...   # error: the local executor runs on this machine only ...
    python -m launch --sbatch time=10 ...             # error: sbatch option time is the launcher's own ...
    python -m launch --sbatch arr=0-1 ...             # error: ... sbatch reads it as --array ...

Each error names where the value came from (`Request.where`): the flag, or the profile file
and key. What is refused in names and paths, and why, is `launch.shell`'s to say.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from ae_dist.errors import UsageError
from launch import shell
from launch.request import EXECUTORS, FIELDS, Request, flag_of

# sbatch options the launcher writes itself, or that change the task layout it plans (one task per GPU, one
# log per task in run.dir/submitit): each with the flag to use instead. sbatch also takes any unambiguous
# prefix of a long option (`--arr` is `--array`), in #SBATCH lines too, so a key that begins one of these
# names is refused as well (`refused_as`).
LEAVE_OUT = "leave it out: the launcher writes it (each task's log goes to run.dir/submitit, as the registry says)"
REFUSED = {"array": "use --array-parallelism N with --sweep KEY=V1,V2", "nodes": "use --nodes (and --min-nodes)",
           "ntasks": "use --nodes and --tasks-per-node", "ntasks-per-node": "use --tasks-per-node",
           "cpus-per-task": "use --cpus-per-task", "gpus": "use --gpus-per-node (one task per GPU)",
           "gpus-per-node": "use --gpus-per-node", "gpus-per-task": "use --gpus-per-node (one task per GPU)",
           "mem": "use --mem-gb", "time": "use --time", "partition": "use --partition", "account": "use --account",
           "qos": "use --qos", "constraint": "use --constraint", "job-name": "use --job-name",
           "signal": "use --signal-delay-s", "requeue": "use --max-requeues", "no-requeue": "use --max-requeues 0",
           "exclude": "use --exclude", "no-kill": "use --min-nodes", "output": LEAVE_OUT, "error": LEAVE_OUT,
           "open-mode": LEAVE_OUT, "parsable": LEAVE_OUT, "wrap": LEAVE_OUT}


def refused_as(key: str) -> list[str]:
    """The refused options sbatch could read ``key`` as: the option itself, or those it abbreviates."""
    return [key] if key in REFUSED else [name for name in REFUSED if name.startswith(key)]


def check(request: Request, scheduler_here: bool = True) -> None:
    """Impossible or unsafe requests end here, before anything is submitted (or shipped to a login node)."""
    check_ssh(request)
    for name in ("nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "signal_delay_s", "max_requeues",
                 "array_parallelism", "min_nodes", "max_restarts", "max_node_failures"):
        value, least = getattr(request, name), FIELDS[name].metadata["least"]
        if value is not None and value < least:
            raise UsageError(f"{flag_of(FIELDS[name])} is {value}", request.where(name), f"use an integer >= {least}")
    if request.executor not in EXECUTORS:
        raise UsageError(f"unknown executor {request.executor!r}", request.where("executor"),
                         f"use one of {' | '.join(EXECUTORS)}")
    if request.mem_gb is not None and request.mem_gb <= 0:
        raise UsageError(f"--mem-gb is {request.mem_gb:g}", request.where("mem_gb"), "use a number > 0")
    request.time_min  # noqa: B018  (parses, or says why not)
    if request.exclude is not None and not re.fullmatch(r"[A-Za-z0-9._\[\],-]+", request.exclude):
        raise UsageError(f"not a host list {request.exclude!r}", request.where("exclude"),
                         "give host names, comma-separated (node7,node[8-9])")
    for name in ("partition", "account", "qos", "constraint", "job_name"):
        if getattr(request, name) is not None:
            shell.check_sbatch_value(getattr(request, name), request.where(name))
    for key, value in request.sbatch:
        where = request.where(f"sbatch.{key}")
        shell.check_sbatch_key(key, where)
        taken = refused_as(key)
        if taken == [key]:
            raise UsageError(f"sbatch option {key} is the launcher's own", where, REFUSED[key])
        if taken:
            fixes = "; ".join(dict.fromkeys(f"for --{name}, {REFUSED[name]}" for name in taken))
            raise UsageError(f"sbatch option {key} is the launcher's own: sbatch reads it as "
                             f"{' or '.join('--' + name for name in taken)}", where, fixes)
        if value is not True:
            shell.check_sbatch_value(value, where)
    shell.check_lines(request.setup, request.where("setup"))
    _check_shape(request)
    if request.executor == "slurm" and scheduler_here:
        _check_slurm(request)


def check_ssh(request: Request) -> None:
    if request.host is not None:
        shell.check_host(request.host, request.where("host"))
    for name in ("remote_dir", "ssh_config"):
        if getattr(request, name) is not None:
            shell.check_name(getattr(request, name), request.where(name))
    shell.check_lines(request.remote_setup, request.where("remote_setup"))


def _check_shape(request: Request) -> None:
    if request.gpus_per_node and request.ranks_per_node != request.gpus_per_node:
        raise UsageError(f"{request.tasks_per_node} tasks per node for {request.gpus_per_node} GPUs per node",
                         request.where("tasks_per_node"), "leave it out: one task per GPU")
    if request.executor == "local" and request.nodes != 1:
        raise UsageError(f"the local executor runs on this machine only, not on {request.nodes} nodes",
                         request.where("nodes"), "use --nodes 1, or --executor slurm")
    if request.executor == "debug" and request.world_size != 1:
        raise UsageError("the debug executor runs one process inside this one", request.where("tasks_per_node"),
                         "use --executor local for several processes")


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
        raise UsageError(f"sinfo failed ({reason})", request.where("partition"), "check that SLURM answers here (sinfo)")
    partitions = sorted(set(result.stdout.split()))
    if request.partition not in partitions:
        raise UsageError(f"partition {request.partition!r} is not listed by sinfo", request.where("partition"),
                         f"use one of {', '.join(partitions) or '(none)'}")
