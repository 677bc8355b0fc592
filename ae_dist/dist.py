"""Distributed setup: the one place that reads the launcher's environment.

torchrun exports RANK / LOCAL_RANK / WORLD_SIZE / LOCAL_WORLD_SIZE / MASTER_ADDR /
MASTER_PORT; an `srun` task without them is read from SLURM_PROCID / SLURM_LOCALID /
SLURM_NTASKS / SLURM_NTASKS_PER_NODE and the first host of SLURM_JOB_NODELIST. A plain
`python -m ae_dist.train` is world size 1 and creates no process group.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ae_dist.errors import UsageError

TORCHRUN_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device
    backend: str | None  # None when world_size == 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def _first_slurm_host(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    match = re.match(r"([^,\[]+)(?:\[(\d+))?", nodelist)  # "node[3-5,9]" -> node3
    return match.group(1) + (match.group(2) or "") if match else nodelist


def _tasks_per_node(env: dict[str, str]) -> int:
    value = env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", "1")
    return int(re.match(r"\d+", value).group(0))  # "2(x3)" -> 2


def read_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The torchrun variables, from torchrun itself or translated from an srun task."""
    env = dict(os.environ if env is None else env)
    if "RANK" in env or "SLURM_PROCID" not in env or "SLURM_STEP_ID" not in env:
        return env
    job_id = int(env.get("SLURM_JOB_ID", "0"))
    env.update(
        RANK=env["SLURM_PROCID"],
        LOCAL_RANK=env.get("SLURM_LOCALID", "0"),
        WORLD_SIZE=env.get("SLURM_NTASKS", "1"),
        LOCAL_WORLD_SIZE=str(_tasks_per_node(env)),
        MASTER_ADDR=env.get("MASTER_ADDR") or _first_slurm_host(env.get("SLURM_JOB_NODELIST", "localhost")),
        MASTER_PORT=env.get("MASTER_PORT") or str(20000 + job_id % 20000),
    )
    return env


def pick_device(local_rank: int, requested: str = "auto") -> torch.device:
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError("CUDA requested but not available", "train.device", "use train.device=cpu or auto")
    return torch.device("cuda", local_rank)


def cpu_threads(local_world_size: int, requested: int = 0, env: dict[str, str] | None = None) -> int:
    """Each rank's share of this node's cores: never more, so ranks do not oversubscribe."""
    env = os.environ if env is None else env
    if requested:
        return requested
    if env.get("SLURM_CPUS_PER_TASK"):
        return max(1, int(env["SLURM_CPUS_PER_TASK"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, local_world_size))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _check_port_free(addr: str, port: int) -> None:
    """Rank 0 binds MASTER_PORT; if another program holds it, say so now rather than hang."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            raise UsageError(f"MASTER_PORT {port} is already in use on {addr}", "MASTER_PORT",
                             "pick a free port, or unset MASTER_PORT for single-node runs") from None


def init_distributed(device: str = "auto", timeout_s: float = 300.0) -> DistInfo:
    env = read_env()
    world_size = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    local_rank = int(env.get("LOCAL_RANK", "0"))
    local_world_size = int(env.get("LOCAL_WORLD_SIZE", str(world_size)))
    dev = pick_device(local_rank, device)
    if world_size == 1:
        return DistInfo(rank, local_rank, 1, 1, dev, None)
    missing = [key for key in ("MASTER_ADDR", "MASTER_PORT") if key not in env]
    if missing:
        raise UsageError(f"WORLD_SIZE={world_size} but {' and '.join(missing)} unset", missing[0],
                         "start through torchrun, srun or python -m launch, which set them")
    os.environ.update({key: env[key] for key in TORCHRUN_KEYS if key in env})  # init_process_group reads these
    if rank == 0 and "TORCHELASTIC_RUN_ID" not in env:  # torchrun's agent already owns the store port
        _check_port_free(env["MASTER_ADDR"], int(env["MASTER_PORT"]))
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, local_rank, world_size, local_world_size, dev, backend)


def teardown(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed(device: str = "auto", timeout_s: float = 300.0) -> Iterator[DistInfo]:
    """One init, one teardown."""
    info = init_distributed(device, timeout_s)
    try:
        yield info
    finally:
        teardown(info)


def all_reduce_(tensor: torch.Tensor, info: DistInfo, op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
    if info.distributed:
        dist.all_reduce(tensor, op=op)
    return tensor


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()
