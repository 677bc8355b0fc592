"""The learning rate of each optimizer step: a pure function of the step and the horizon.

The horizon is ``train.epochs`` x steps per epoch, never ``train.max_steps``, so a run stopped and
continued (resume, requeue, an elastic restart, a larger ``train.max_steps``) takes the same rates.
Step ``n`` counts optimizer steps from 1 (the ``step`` of metrics.jsonl):

- warmup, ``n <= W``: ``lr * n / W``;
- after it, with ``p = (n - W) / (horizon - W)`` clipped to [0, 1]: constant ``lr``; cosine
  ``min_lr + (lr - min_lr) * (1 + cos(pi p)) / 2``; linear ``min_lr + (lr - min_lr) * (1 - p)``.
"""

from __future__ import annotations

import math

from ae_dist.config import OptimConfig


def lr_at(cfg: OptimConfig, step: int, horizon: int) -> float:
    """The learning rate of optimizer step ``step`` (1-based) of a run of ``horizon`` steps."""
    warmup = cfg.warmup_steps
    if warmup and step <= warmup:
        return cfg.lr * step / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(max((step - warmup) / max(horizon - warmup, 1), 0.0), 1.0)
    if cfg.schedule == "cosine":
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * (1.0 - progress)
