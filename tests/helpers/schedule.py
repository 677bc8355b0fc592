"""Step counts of a test run, derived from its config the way the trainer derives them.

The trainer prints them at start (``global batch 64 = 2 rank(s) x 32; 23 steps per epoch, 3 epochs``);
here they come from the same pieces: the trainer's argument parsing (`ae_dist.train.parse_args`),
the training split (`ae_dist.data.load_split`: 1,500 digits) and `ae_dist.data.EpochBatches`
(whole global batches only, the same for every world size)::

    s = schedule(TINY)      # s.steps_per_epoch == 23, s.total == 69
    s.checkpoints()         # every step a checkpoint is written: the interval and the epoch ends
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from ae_dist import data
from ae_dist.train import parse_args


@dataclass(frozen=True)
class Schedule:
    steps_per_epoch: int
    epochs: int
    log_every: int  # train.log_every
    every_steps: int  # checkpoint.every_steps (0: epoch ends only)
    keep: int  # checkpoint.keep

    @property
    def total(self) -> int:
        return self.steps_per_epoch * self.epochs

    def epoch_end(self, epoch: int) -> int:
        """The global step at which epoch ``epoch`` (1-based) ends."""
        return self.steps_per_epoch * epoch

    def epoch_ends(self) -> list[int]:
        return [self.epoch_end(epoch) for epoch in range(1, self.epochs + 1)]

    def logged(self) -> list[int]:
        """The steps with a train record in metrics.jsonl."""
        return list(range(self.log_every, self.total + 1, self.log_every))

    def checkpoints(self) -> list[int]:
        """Every step at which an uninterrupted run writes a checkpoint, in order."""
        interval = range(self.every_steps, self.total + 1, self.every_steps) if self.every_steps else []
        return sorted({*interval, *self.epoch_ends()})

    def kept(self) -> list[int]:
        """The checkpoints an uninterrupted run leaves behind (the newest ``keep``)."""
        return self.checkpoints()[-self.keep:]

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch) a checkpoint at ``step`` holds: 0-based epoch, batches done in it."""
        return divmod(step, self.steps_per_epoch)

    def where(self, step: int) -> str:
        epoch, into = self.position(step)
        return f"end of epoch {epoch}" if into == 0 else f"epoch {epoch + 1}, {into} of {self.steps_per_epoch} steps in"


def schedule(args: Sequence[str]) -> Schedule:
    """The schedule of ``python -m ae_dist.train ARGS`` (any world size)."""
    return _schedule(tuple(args))


@functools.cache
def _schedule(args: tuple[str, ...]) -> Schedule:
    config, _ = parse_args(list(args))
    train = config.train
    batches = data.EpochBatches(data.load_split(config.data, "train"), train.batch_size, 0, 1, train.seed)
    return Schedule(len(batches), train.epochs, train.log_every, config.checkpoint.every_steps, config.checkpoint.keep)
