"""Decisions that rank 0 makes for every rank, and the check that every rank sees its run folder.

Without them each rank would read "the newest checkpoint" from its own view of ``run.dir``: on
a node-local folder (``/tmp``, ``$TMPDIR``) or just after a requeue on NFS, rank 0 resumes at
step 47 while rank 1 starts at 0, and their collectives abort in C++.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch.distributed as dist

from ae_dist import errors
from ae_dist.config import Config
from ae_dist.config.templates import template_fields
from ae_dist.dist.group import DistInfo
from ae_dist.dist.job import Job
from ae_dist.errors import AeDistError, UsageError
from ae_dist.run import checkpoint
from ae_dist.run.folder import RunDir
from ae_dist.run.lease import read_holder
from ae_dist.run.templates import resolve_template

T = TypeVar("T")
SEE_LEASE_S = 15.0  # how long a rank looks for rank 0's lease (NFS attribute caches lag a little)


def on_rank0(info: DistInfo, decide: Callable[[], T]) -> T:
    """``decide()`` on rank 0; its small, picklable answer (or its error) reaches every rank.

    An error is raised on every rank and said once, by rank 0.
    """
    box: list[Any] = [None]
    error: BaseException | None = None
    if info.is_main:
        try:
            box[0] = ("ok", decide())
        except AeDistError as err:
            error, box[0] = err, ("error", type(err).__name__, err.problems)
        except BaseException as err:  # said by rank 0 as it is; the others only follow
            error, box[0] = err, ("crash",)
    if info.distributed:
        dist.broadcast_object_list(box, src=0)
    kind, *rest = box[0]
    if kind == "ok":
        return rest[0]
    if error is None:
        cls = getattr(errors, rest[0], UsageError) if kind == "error" else AeDistError
        problems = rest[1] if kind == "error" else [("rank 0 failed while reading the run folder", "run.dir",
                                                     "see rank 0's error")]
        error = cls.many(problems) if issubclass(cls, AeDistError) else UsageError.many(problems)
    if isinstance(error, AeDistError):
        error.all_ranks_alike = True
    raise error


def load_agreed(run_dir: RunDir, path: str, token: str, shapes: dict[str, tuple[int, ...]]) -> tuple[Any, str]:
    """On ranks other than 0: (the checkpoint rank 0 chose, or None; what is wrong with this rank's view)."""
    if token:
        deadline = time.monotonic() + SEE_LEASE_S
        while (holder := read_holder(run_dir.root)) is None or holder.token != token:
            if time.monotonic() > deadline:
                return None, f"does not see the lease that rank 0 holds in {run_dir.root}"
            time.sleep(0.25)
    if not path:
        return None, ""
    try:
        payload = checkpoint.read(Path(path))
        checkpoint.check_tensors(payload, shapes)
    except (OSError, ValueError) as err:
        return None, f"cannot read {path}, which rank 0 resumes from ({str(err)[:80]})"
    return payload, ""


def check_every_rank_sees(info: DistInfo, run_dir: RunDir, problem: str) -> None:
    """Every rank's view of the run folder is rank 0's, or all stop with one line (said by rank 0)."""
    if not info.distributed:
        return
    views: list[Any] = [None] * info.world_size
    dist.all_gather_object(views, (problem, socket.gethostname()))
    bad = [f"rank {rank} on {host} {what}" for rank, (what, host) in enumerate(views) if what]
    if bad:
        error = UsageError(f"run.dir is not shared between nodes: {'; '.join(bad[:4])}", "run.dir",
                           "put run.dir on a file system that every node mounts (not /tmp or $TMPDIR), "
                           "or run on one node")
        error.all_ranks_alike = True
        raise error


def agree_run_dir(config: Config, info: DistInfo) -> Config:
    """``config`` with its run.dir template resolved by rank 0 (`resolve_template`) and sent to every rank."""
    if not template_fields(config.run.dir):
        return config
    resolved = [""]
    if info.is_main:
        try:
            resolved[0] = resolve_template(config.run.dir, Job.from_env().launch_key)
        except OSError as err:
            resolved[0] = f"\0{err.strerror or err}"
    if info.distributed:
        dist.broadcast_object_list(resolved, src=0)
    if resolved[0].startswith("\0"):
        raise UsageError(f"cannot create the run folder ({resolved[0][1:]})", "run.dir", "choose a writable folder")
    if info.is_main:
        print(f"run folder: {resolved[0]} (run.dir template {config.run.dir}; rerun with run.dir={resolved[0]} "
              "to resume it)", flush=True)
    return dataclasses.replace(config, run=dataclasses.replace(config.run, dir=resolved[0]))
