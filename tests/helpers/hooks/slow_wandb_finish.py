"""W&B's ``Run.finish`` takes SLOW_FINISH_S seconds more (default 8): a slow upload at the end of a run."""

from __future__ import annotations

import os
import time

from wandb.sdk import wandb_run

SLOW_FINISH_S = float(os.environ.get("SLOW_FINISH_S", "8"))
finish = wandb_run.Run.finish


def slow_finish(self, *args, **kwargs):
    os.write(2, f"slow W&B finish: {SLOW_FINISH_S:g} s\n".encode())
    time.sleep(SLOW_FINISH_S)
    return finish(self, *args, **kwargs)


wandb_run.Run.finish = slow_finish
