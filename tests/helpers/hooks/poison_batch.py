"""A NaN pixel in the batch of one global step: POISON_STEP (1-based), on every rank."""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch

from ae_dist import data

POISON_STEP = int(os.environ["POISON_STEP"])
real_epoch = data.EpochBatches.epoch


def epoch(self: data.EpochBatches, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
    for k, images in enumerate(real_epoch(self, epoch, start), start):
        if epoch * self.steps + k + 1 == POISON_STEP:
            images = images.clone()
            images[0, 0, 0, 0] = float("nan")
        yield images


data.EpochBatches.epoch = epoch
