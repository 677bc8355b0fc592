"""Training steps from the SLOW_FROM_STEP-th on (default 1) take at least SLOW_STEP_S seconds (default 1):
time to send a second signal while a step is still running."""

from __future__ import annotations

import itertools
import os
import time

from ae_dist import engine

SLOW_STEP_S = float(os.environ.get("SLOW_STEP_S", "1"))
SLOW_FROM_STEP = int(os.environ.get("SLOW_FROM_STEP", "1"))
real_step = engine.train_step
calls = itertools.count(1)


def train_step(*args, **kwargs):
    result = real_step(*args, **kwargs)
    if next(calls) >= SLOW_FROM_STEP:
        time.sleep(SLOW_STEP_S)
    return result


engine.train_step = train_step
