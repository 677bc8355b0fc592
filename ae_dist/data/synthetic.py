"""Deterministic generated 28x28 images of any count (benchmarks, scale tests)."""

from __future__ import annotations

import torch

from ae_dist.data.splits import Split


def synthetic_split(count: int, seed: int) -> Split:
    """Deterministic 28x28 images: one Gaussian blob per image, its class = its grid cell."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (count,), generator=gen)
    centre_x = (labels % 5).float() * 5 + 4 + torch.rand(count, generator=gen) * 2
    centre_y = (labels // 5).float() * 12 + 8 + torch.rand(count, generator=gen) * 4
    width = 1.5 + torch.rand(count, generator=gen) * 2.5
    grid = torch.arange(28, dtype=torch.float32)
    dx = (grid.view(1, 1, 28) - centre_x.view(-1, 1, 1)) ** 2
    dy = (grid.view(1, 28, 1) - centre_y.view(-1, 1, 1)) ** 2
    images = torch.exp(-(dx + dy) / (2 * width.view(-1, 1, 1) ** 2))
    return Split((images * 255).round().to(torch.uint8).unsqueeze(1), labels)
