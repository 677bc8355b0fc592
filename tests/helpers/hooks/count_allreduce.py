"""Count DDP's gradient all-reduces: a comm hook (DDP's own allreduce_hook, counted) on each rank's
DDP model; after each one the count goes to ALLREDUCE_DIR/rank<RANK>.txt."""

from __future__ import annotations

import os
from pathlib import Path

from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from ae_dist import trainer

OUT = Path(os.environ["ALLREDUCE_DIR"]) / f"rank{os.environ.get('RANK', '0')}.txt"
real_wrap = trainer.wrap
calls = [0]


def counted(state, bucket):
    calls[0] += 1
    OUT.write_text(str(calls[0]))
    return default_hooks.allreduce_hook(state, bucket)


def wrap(model, config, info):
    wrapped = real_wrap(model, config, info)
    if info.distributed:
        wrapped.register_comm_hook(None, counted)
    return wrapped


trainer.wrap = wrap
