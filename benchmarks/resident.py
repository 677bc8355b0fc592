"""Tensor-resident training data for the hand-written and Lightning contenders.

The train split is read once (torchvision's IDX reader) into one uint8 tensor on the
device; a batch is one ``index_select`` of whole rows, then ``float() / 255``: the same
gather ae-dist uses, so the loops differ only in what wraps it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torchvision import datasets


def load_train_images(root: str, device: torch.device) -> torch.Tensor:
    """(N, 784) uint8 on ``device``."""
    images = datasets.FashionMNIST(root=root, train=True, download=False).data
    return images.reshape(len(images), -1).to(device)


class ResidentBatches:
    """Rank ``rank``'s (batch // world_size, 1, 28, 28) float batches, a fresh permutation each epoch.

    Every rank draws the same permutation (same seed) and takes its slice of each global batch.
    """

    def __init__(self, images: torch.Tensor, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        self.images = images
        self.local = global_batch // world_size
        self.global_batch = global_batch
        self.rank = rank
        self.steps = len(images) // global_batch
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[torch.Tensor]:
        order = torch.randperm(len(self.images), generator=self.generator)[: self.steps * self.global_batch]
        order = order.view(self.steps, self.global_batch)[:, self.rank * self.local:(self.rank + 1) * self.local]
        order = order.contiguous().to(self.images.device)
        for k in range(self.steps):
            yield self.images.index_select(0, order[k]).float().div_(255).view(-1, 1, 28, 28)
