"""Test-only hook (AE_DIST_TEST_HOOK=tests.helpers.hooks.wandb_fails): W&B's ``Run.log`` raises from its 3rd call on.

    AE_DIST_TEST_HOOK=tests.helpers.hooks.wandb_fails python -m ae_dist.train ...

What a W&B failure in the middle of a run looks like to the trainer (a full disk under the
W&B folder, a wandb-core that died, a bug in wandb).
"""

from __future__ import annotations

import wandb
from wandb.sdk import wandb_run

FAIL_FROM_CALL = 3
log = wandb_run.Run.log
calls = [0]


def failing_log(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] >= FAIL_FROM_CALL:
        raise wandb.errors.CommError("injected by tests/helpers/hooks/wandb_fails.py")
    return log(self, *args, **kwargs)


wandb_run.Run.log = failing_log
