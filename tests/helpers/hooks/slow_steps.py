"""Training steps from the SLOW_FROM_STEP-th on (default 1) take at least SLOW_STEP_S seconds (default 1):
time to send a second signal while a step is still running. Each says on stderr when its slow part
starts (`slow step N: S s`), so a test can signal while it is surely inside that step."""

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
    step = next(calls)
    if step >= SLOW_FROM_STEP:
        os.write(2, f"slow step {step}: {SLOW_STEP_S:g} s\n".encode())
        time.sleep(SLOW_STEP_S)
    return result


engine.train_step = train_step
