"""Count the torch.distributed calls each rank makes from the start of its first training step to its exit
(DDP's gradient all-reduce, in C++, is not among them), by name, in ``$COUNT_FILE.<rank>`` (JSON) at exit."""

from __future__ import annotations

import atexit
import functools
import json
import os

import torch.distributed as dist

from ae_dist import engine

NAMES = ("all_reduce", "all_gather", "all_gather_object", "all_gather_into_tensor", "barrier", "broadcast",
         "broadcast_object_list", "reduce", "gather", "scatter", "reduce_scatter", "all_to_all", "monitored_barrier")
counts: dict[str, int] = {}
steps = [0]


def counted(name, call):
    @functools.wraps(call)
    def wrapper(*args, **kwargs):
        if steps[0]:
            counts[name] = counts.get(name, 0) + 1
        return call(*args, **kwargs)
    return wrapper


for name in NAMES:
    if hasattr(dist, name):
        setattr(dist, name, counted(name, getattr(dist, name)))
real_step = engine.train_step


def train_step(*args, **kwargs):
    steps[0] += 1
    return real_step(*args, **kwargs)


engine.train_step = train_step


@atexit.register
def write() -> None:
    with open(f"{os.environ['COUNT_FILE']}.{os.environ.get('RANK', '0')}", "w") as fh:
        json.dump({"steps": steps[0], "counts": counts}, fh)
