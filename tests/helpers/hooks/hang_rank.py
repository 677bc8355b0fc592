"""Rank HANG_RANK (default 1) sleeps for good after HANG_AFTER_STEPS steps (default 12), where it waits for its
next batch: no collective is ever reached there, so none can raise. It says so on stderr first
(`hanging after step N`); its heartbeat thread beats on."""

from __future__ import annotations

import os
import threading

from ae_dist.data import batches

HANG_RANK = int(os.environ.get("HANG_RANK", "1"))
HANG_AFTER_STEPS = int(os.environ.get("HANG_AFTER_STEPS", "12"))
real_epoch = batches.EpochBatches.epoch
taken = [0]


def epoch(self, *args, **kwargs):
    for images in real_epoch(self, *args, **kwargs):
        if int(os.environ.get("RANK", "0")) == HANG_RANK and taken[0] == HANG_AFTER_STEPS:
            os.write(2, f"hanging after step {taken[0]}\n".encode())
            threading.Event().wait()
        taken[0] += 1
        yield images


batches.EpochBatches.epoch = epoch
