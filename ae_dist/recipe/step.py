"""`Recipe`: what one optimizer step needs beyond the model and optimizer, built once per start.

The micro-batches of ``train.accumulate``, their keyed noise, the step's learning rate, gradient
clipping and the EMA; `ae_dist.engine.train_step` applies them in that order. ``logged`` keeps the
newest step's extra terms on the device (grad_norm, and the VAE's recon and kl) for logging steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ae_dist.config import ModelConfig, OptimConfig
from ae_dist.recipe import noise, objective, schedule
from ae_dist.recipe.ema import EMA


@dataclass
class Recipe:
    optim: OptimConfig
    model: ModelConfig
    seed: int
    accumulate: int  # micro-batches per optimizer step
    horizon: int  # train.epochs x steps per epoch: the schedule's length
    global_batch: int
    positions: torch.Tensor  # where this rank's rows sit in the global batch
    ema: EMA | None = None
    logged: dict[str, torch.Tensor] = field(default_factory=dict)

    def lr(self, step: int) -> float:
        return schedule.lr_at(self.optim, step, self.horizon)

    def micro_batches(self, images: torch.Tensor, step: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """This rank's batch in ``accumulate`` equal parts, each with its samples' noise (or None)."""
        shape = objective.noise_shape(self.model, tuple(images.shape[1:]))
        drawn = None if shape is None else noise.keyed_normal(self.seed, step, self.model.kind, self.global_batch,
                                                              self.positions, shape, images.device)
        parts = images.chunk(self.accumulate) if self.accumulate > 1 else (images,)
        noises = (drawn.chunk(self.accumulate) if self.accumulate > 1 else (drawn,)) if drawn is not None \
            else (None,) * len(parts)
        return list(zip(parts, noises))


def clip_gradients(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale ``grads`` so their global L2 norm is at most ``max_norm``; the norm before clipping.

    Bitwise ``torch.nn.utils.clip_grad_norm_`` (its factor ``max_norm / (norm + 1e-6)``, at most 1,
    which torch forms as ``reciprocal(norm + 1e-6) * max_norm`` in float32), with a third of its
    Python. On the CPU, where reading the norm costs no device sync, the factor is formed in
    float32 on the host by the same correctly rounded operations (three tiny tensor ops saved),
    and a factor of exactly 1 (nothing to clip) skips the multiplication, which would leave the
    gradients as they are (tests/test_recipe.py compares both paths with torch's).
    """
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    if norm.device.type != "cpu" or norm.dtype != torch.float32:
        torch._foreach_mul_(grads, (max_norm / (norm + 1e-6)).clamp_(max=1.0))
        return norm
    one = np.float32(1.0)
    factor = min(one / (np.float32(norm.item()) + np.float32(1e-6)) * np.float32(max_norm), one)
    if factor < one:
        torch._foreach_mul_(grads, float(factor))  # a float32 value, cast back exactly: torch's float32 factor
    return norm
