"""The one function that loads a split: it picks the source module by ``data.name``.

Parts: ``train`` and ``test`` as each source defines them, and ``val``, the rows of the training
split that ``data.val_fraction`` holds out (`ae_dist.data.holdout`, keyed by row index); ``train``
is then the rest. With ``data.val_fraction=0`` the training split is the source's whole one.
"""

from __future__ import annotations

import numpy as np
import torch

from ae_dist.config import DataConfig
from ae_dist.data import digits, holdout, mnist, synthetic
from ae_dist.data.splits import Split

PARTS = ("train", "val", "test")


def load_split(cfg: DataConfig, part: str) -> Split:
    """The ``part`` (train, val or test) of the dataset ``cfg`` names."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, not {part!r}")
    if part == "test":
        return _source_split(cfg, train=False)
    whole = _source_split(cfg, train=True)
    if cfg.val_fraction <= 0:
        return whole if part == "train" else Split(whole.images[:0], whole.labels[:0])
    in_val = holdout.held_out(holdout.index_hashes(np.arange(len(whole)), "val"), cfg.val_fraction)
    rows = torch.from_numpy(np.flatnonzero(in_val if part == "val" else ~in_val))
    return Split(whole.images[rows].contiguous(), whole.labels[rows].contiguous())


def _source_split(cfg: DataConfig, train: bool) -> Split:
    if cfg.name in mnist.TORCHVISION_CLASSES:
        return mnist.load(cfg, train)
    if cfg.name == "digits":
        return digits.load(train)
    return synthetic.synthetic_split(cfg.synthetic_train if train else cfg.synthetic_test, seed=0 if train else 1)
