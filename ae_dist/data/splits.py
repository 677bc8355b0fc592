"""A split of a dataset: uint8 images (N, C, H, W) and int64 labels, whatever its source.

The tensors are in RAM (the built-in datasets) or memory-mapped from a prepared dataset (a
folder or an array: `ae_dist.data.custom`), whose class names and identity (its manifest's
digest) the split carries.
"""

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
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)
    classes: tuple[str, ...] = ()  # label -> class name, when the source names them (folders: folder names)
    digest: str = ""  # the prepared dataset's identity ("" for a built-in dataset loaded from its source)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device), self.classes, self.digest)

    def class_names(self, name: str) -> tuple[str, ...] | None:
        """The names of the labels: the split's own, else the built-in dataset's (``data.name``)."""
        return self.classes or CLASS_NAMES.get(name)
