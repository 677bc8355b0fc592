"""Model selection on the validation split, and early stopping.

Each validation pass compares the selected weights' loss (the EMA's when ``train.ema_decay`` > 0, else
the raw weights') with the best so far; a new best resets the count of passes without one, and
``train.early_stop_patience`` such passes in a row stop the run. The state lives in `Selection`,
which every checkpoint carries, so a resumed run chooses and stops exactly where an uninterrupted
one does. The test split is never used here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Selection:
    best_loss: float = math.inf  # the best validation loss so far
    best_step: int = 0  # the step whose weights model-best.pt holds (0: none yet)
    since_best: int = 0  # validation passes since the best one
    stopped_early: bool = False  # the run ended on train.early_stop_patience (it is complete)

    def observe(self, loss: float, step: int, patience: int) -> bool:
        """Record one pass's loss; true when it is a new best."""
        improved = loss < self.best_loss
        if improved:
            self.best_loss, self.best_step, self.since_best = loss, step, 0
        else:
            self.since_best += 1
        self.stopped_early = bool(patience) and self.since_best >= patience
        return improved

    def to_list(self) -> list:
        return [self.best_loss, self.best_step, self.since_best, self.stopped_early]

    @classmethod
    def from_list(cls, saved: list | None) -> Selection:
        return cls(float(saved[0]), int(saved[1]), int(saved[2]), bool(saved[3])) if saved else cls()
