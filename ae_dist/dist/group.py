"""Distributed setup: the one place that reads the launcher's environment.

torchrun exports RANK / LOCAL_RANK / WORLD_SIZE / LOCAL_WORLD_SIZE / MASTER_ADDR /
MASTER_PORT; an `srun` task without them is read from SLURM_PROCID / SLURM_LOCALID /
SLURM_NTASKS / SLURM_NTASKS_PER_NODE and the first host of SLURM_JOB_NODELIST. A plain
`python -m ae_dist.train` is world size 1 and creates no process group.

The ranks meet in the rendezvous store (rank 0's, or torchrun's agent's) under a key
prefix new for each start, so workers that torchrun restarts never read their killed
predecessors' addresses. Each rank beats a heartbeat into the store from a thread; when a
collective fails (gloo's timeout, a closed connection), the heartbeats name the rank that
went silent (ae_dist.dist.liveness), and the command ends with that one line instead of a traceback.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from ae_dist.dist.job import expand_hosts, master_port
from ae_dist.errors import RendezvousFailed, UsageError
from ae_dist.dist.liveness import Heartbeat, group_timeout, peer_lost, within

TORCHRUN_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device
    backend: str | None  # None when world_size == 1
    heartbeat: Heartbeat | None = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def _tasks_per_node(env: dict[str, str]) -> int:
    value = env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", "1")
    return int(re.match(r"\d+", value).group(0))  # "2(x3)" -> 2


def read_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The torchrun variables, from torchrun itself or translated from an srun task."""
    env = dict(os.environ if env is None else env)
    if "RANK" in env or "SLURM_PROCID" not in env or "SLURM_STEP_ID" not in env:
        return env
    env.update(
        RANK=env["SLURM_PROCID"],
        LOCAL_RANK=env.get("SLURM_LOCALID", "0"),
        WORLD_SIZE=env.get("SLURM_NTASKS", "1"),
        LOCAL_WORLD_SIZE=str(_tasks_per_node(env)),
        MASTER_ADDR=env.get("MASTER_ADDR") or (expand_hosts(env.get("SLURM_JOB_NODELIST", "")) or ["localhost"])[0],
        MASTER_PORT=env.get("MASTER_PORT") or str(master_port(env.get("SLURM_JOB_ID", "0"))),
    )
    return env


def pick_device(local_rank: int, requested: str = "auto") -> torch.device:
    """The task's own view: its local rank among the devices it sees (one under ``--gpus-per-task=1`` or
    ``--gpu-bind``, where ``cuda:LOCAL_RANK`` would be an invalid ordinal), never the global rank."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError("CUDA requested but not available", "train.device", "use train.device=cpu or auto")
    return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))


CUBLAS_WORKSPACE = ":4096:8"  # what cuBLAS needs for reproducible results (CUDA's own documentation)


def set_deterministic(device: torch.device, enabled: bool) -> None:
    """``train.deterministic`` on CUDA: deterministic algorithms and cuBLAS's fixed workspace, so a resume is
    bitwise; before the first cuBLAS call. On the CPU the kernels used here are deterministic already."""
    if not enabled or device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)


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


def init_distributed(device: str = "auto", timeout_s: float = 300.0, incidents_dir: Path | None = None) -> DistInfo:
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
    os.environ.update({key: env[key] for key in TORCHRUN_KEYS if key in env})  # for whatever else reads them
    if rank == 0 and "TORCHELASTIC_RUN_ID" not in env:  # torchrun's agent already owns the store port
        _check_port_free(env["MASTER_ADDR"], int(env["MASTER_PORT"]))
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    store, prefix = _open_store(env, rank, world_size, timeout_s)
    if backend == "nccl":
        nccl_flight_recorder()
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=group_timeout(timeout_s)),
                            device_id=dev if dev.type == "cuda" else None)
    heartbeat = Heartbeat(env["MASTER_ADDR"], int(env["MASTER_PORT"]), _store_host(env), prefix, rank, world_size,
                          timeout_s, incidents_dir)
    return DistInfo(rank, local_rank, world_size, local_world_size, dev, backend, heartbeat)


NCCL_TRACE_BUFFER = 20000  # collectives NCCL's flight recorder keeps per rank (torchtitan's default)


def nccl_flight_recorder(incidents_dir: Path | None = None) -> None:
    """NCCL's own record of the last collectives, dumped when one times out (as torchtitan sets it up): before
    the process group exists; with ``incidents_dir`` (once the run folder is known and held), the dumps go
    there as ``nccl-trace-rank_<rank>`` beside the stacks. A value already in the environment is kept."""
    os.environ.setdefault("TORCH_NCCL_TRACE_BUFFER_SIZE", str(NCCL_TRACE_BUFFER))
    os.environ.setdefault("TORCH_NCCL_DUMP_ON_TIMEOUT", "1")
    if incidents_dir is not None and "TORCH_NCCL_DEBUG_INFO_TEMP_FILE" not in os.environ:
        with contextlib.suppress(OSError):
            incidents_dir.mkdir(parents=True, exist_ok=True)
            os.environ["TORCH_NCCL_DEBUG_INFO_TEMP_FILE"] = str(incidents_dir / "nccl-trace-rank_")


def teardown(info: DistInfo) -> None:
    if info.heartbeat is not None:
        info.heartbeat.stop()
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed(device: str = "auto", timeout_s: float = 300.0, incidents_dir: Path | None = None) -> Iterator[DistInfo]:
    """One init, one teardown; a collective that fails because a rank went silent becomes `PeerLost`
    (with ``incidents_dir``, every live rank leaves its stacks there: `ae_dist.dist.incidents`)."""
    info = init_distributed(device, timeout_s, incidents_dir)
    try:
        yield info
    except RuntimeError as err:
        lost = peer_lost(err, info.heartbeat)
        if lost is None:
            raise
        raise lost from None
    finally:
        teardown(info)


def _store_host(env: dict[str, str]) -> str:
    hosted_by_agent = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    return f"{'the torchrun agent' if hosted_by_agent else 'rank 0'} at {env['MASTER_ADDR']}:{env['MASTER_PORT']}"


def _open_store(env: dict[str, str], rank: int, world_size: int, timeout_s: float) -> tuple[dist.Store, str]:
    """The rendezvous store, seen through a key prefix that is new for each start of the ranks.

    torchrun's agent hosts the store and keeps it across ``--max-restarts`` restarts; in one
    shared key space, restarted gloo ranks would read the addresses their killed predecessors
    published and fail to connect. Each rank counts its own starts at this world size, so the
    ranks of one start agree on the prefix whatever each node's restart count says; the prefix
    names the world size too, as an elastic job that shrinks starts again at a new size whose
    first start would otherwise reuse the prefix of the first start at the old size.
    """
    addr, port = env["MASTER_ADDR"], int(env["MASTER_PORT"])
    hosts = rank == 0 and env.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    try:
        store = within(timeout_s + 2, lambda: dist.TCPStore(
            addr, port, world_size, is_master=hosts, timeout=datetime.timedelta(seconds=timeout_s), multi_tenant=True))
    except (TimeoutError, dist.DistError):
        what = (f"rank 0 waited {timeout_s:g} s for the other {world_size - 1} ranks to connect to {addr}:{port}" if hosts
                else f"rank {rank} could not reach the rendezvous store of {_store_host(env)} within {timeout_s:g} s")
        raise RendezvousFailed(what, "MASTER_ADDR:MASTER_PORT", "start every rank with the same MASTER_ADDR, "
                               "MASTER_PORT and WORLD_SIZE, and check that no other program holds that port") from None
    prefix = f"ae_dist/world{world_size}/start{store.add(f'ae_dist/starts/world{world_size}/rank{rank}', 1)}/"
    return dist.PrefixStore(prefix, store), prefix


def all_reduce_(tensor: torch.Tensor, info: DistInfo, op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
    if info.distributed:
        dist.all_reduce(tensor, op=op)
    return tensor


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()
