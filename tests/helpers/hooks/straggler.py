"""Test-only hook (AE_DIST_TEST_HOOK=tests.helpers.hooks.straggler): rank 1 sleeps before each training step.

    AE_DIST_TEST_HOOK=tests.helpers.hooks.straggler torchrun --nproc_per_node=2 -m ae_dist.train ...

The sleep (AE_DIST_TEST_SLOW_S seconds, default 0.02) comes before the forward, where a slow
data path would sit, so rank 1 is the straggler and rank 0 waits for it in the all-reduce.
"""

from __future__ import annotations

import os
import time

from ae_dist import engine

SLOW_RANK = 1
SLOW_S = float(os.environ.get("AE_DIST_TEST_SLOW_S", "0.02"))
train_step = engine.train_step


def slow_train_step(*args, **kwargs):
    time.sleep(SLOW_S)
    return train_step(*args, **kwargs)


if int(os.environ.get("RANK", "0")) == SLOW_RANK:
    engine.train_step = slow_train_step
