"""Noise keyed by (seed, step, sample): the same sample at the same step gets the same noise whatever
the world size, ``train.accumulate`` or the start the step was taken in.

Each step draws the whole global batch's noise from a generator seeded by (seed, step, purpose) and
each rank takes the rows of its own samples by their position in the global batch
(`ae_dist.data.EpochBatches.positions`). One draw per step, no per-sample Python.
"""

from __future__ import annotations

import torch

PURPOSES = {"dae": 1, "vae": 2, "prior": 3}
_MASK = (1 << 64) - 1


def key(seed: int, step: int, purpose: str) -> int:
    """A 63-bit generator seed from (seed, step, purpose): splitmix64 over the three."""
    state = 0
    for part in (seed, step, PURPOSES[purpose]):
        state = (state + part + 0x9E3779B97F4A7C15) & _MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        state = z ^ (z >> 31)
    return state >> 1


def keyed_normal(seed: int, step: int, purpose: str, global_batch: int, positions: torch.Tensor,
                 shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Standard normal noise of ``shape`` per sample for the samples at ``positions`` of step ``step``'s global batch."""
    generator = torch.Generator(device=device).manual_seed(key(seed, step, purpose))
    noise = torch.randn((global_batch, *shape), generator=generator, device=device)
    return noise.index_select(0, positions)
