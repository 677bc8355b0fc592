"""W&B's ``Run.log`` raises on every call: what encode's W&B table meets when W&B breaks."""

from __future__ import annotations

import wandb
from wandb.sdk import wandb_run


def failing_log(self, *args, **kwargs):
    raise wandb.errors.CommError("injected by tests/helpers/hooks/wandb_log_fails.py")


wandb_run.Run.log = failing_log
