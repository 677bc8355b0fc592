"""A split of a dataset: uint8 images (N, C, H, W) and int64 labels, whatever its source."""

from __future__ import annotations

from dataclasses import dataclass

import torch

CLASS_NAMES = {  # label -> name, for the latent picture's legend
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "mnist": tuple("0123456789"),
    "digits": tuple("0123456789"),
    "synthetic": tuple(f"cell {row},{col}" for row in range(2) for col in range(5)),  # the blob's grid cell
}


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 (N, 1, 28, 28)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))
