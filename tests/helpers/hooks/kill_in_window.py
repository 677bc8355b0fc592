"""SIGKILL this process inside the accumulation window of optimizer step KILL_AT_STEP (1-based): after
the first micro-batch's backward, before the second's forward (needs train.accumulate >= 2). It says
so on stderr first (`killed inside step N`)."""

from __future__ import annotations

import os
import signal

from ae_dist.recipe.step import Recipe

KILL_AT_STEP = int(os.environ["KILL_AT_STEP"])
real_micro_batches = Recipe.micro_batches


class _KillAfterFirst(list):
    def __iter__(self):
        yield self[0]
        os.write(2, f"killed inside step {KILL_AT_STEP}\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)


def micro_batches(self: Recipe, images, step: int):
    parts = real_micro_batches(self, images, step)
    return _KillAfterFirst(parts) if step == KILL_AT_STEP else parts


Recipe.micro_batches = micro_batches
