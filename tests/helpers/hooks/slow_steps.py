"""Every training step takes at least SLOW_STEP_S seconds (default 1): time to send a second signal."""

from __future__ import annotations

import os
import time

from ae_dist import engine

SLOW_STEP_S = float(os.environ.get("SLOW_STEP_S", "1"))
real_step = engine.train_step


def train_step(*args, **kwargs):
    result = real_step(*args, **kwargs)
    time.sleep(SLOW_STEP_S)
    return result


engine.train_step = train_step
