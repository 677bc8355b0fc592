"""scikit-learn's bundled 8x8 handwritten digits (1,797 real images), resized to 28x28: works offline."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ae_dist.data.splits import Split

DIGITS_TEST_SIZE = 297  # of scikit-learn's 1,797 images; the rest (1,500) train


def load(train: bool) -> Split:
    """scikit-learn's bundled 8x8 digits (0..16), resized to 28x28 uint8; fixed split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    big = F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)
    images = (big.clamp(0, 1) * 255).round().to(torch.uint8)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    chosen = order[DIGITS_TEST_SIZE:] if train else order[:DIGITS_TEST_SIZE]
    return Split(images[chosen].contiguous(), labels[chosen].contiguous())
