"""The one function that loads a split: it picks the source module by ``data.name``.

Parts: ``train`` and ``test`` as each source defines them, and ``val``, the rows of the training
split that ``data.val_fraction`` holds out (`ae_dist.data.holdout`, keyed by row index); ``train``
is then the rest. With ``data.val_fraction=0`` the training split is the source's whole one.
``data.classes`` keeps only the named classes in train and val; test stays whole.

``folder`` and ``array`` are read from their prepared dataset (`ae_dist.data.custom`), which
must exist: the trainer prepares it first (`ae_dist.prepare`).
"""

from __future__ import annotations

import numpy as np
import torch

from ae_dist.config import DataConfig
from ae_dist.data import digits, holdout, mnist, synthetic
from ae_dist.data.splits import CLASS_NAMES, Split
from ae_dist.errors import UsageError

PARTS = ("train", "val", "test")


def load_split(cfg: DataConfig, part: str) -> Split:
    """The ``part`` (train, val or test) of the dataset ``cfg`` names."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, not {part!r}")
    if cfg.name in ("folder", "array"):
        from ae_dist.data import custom

        return custom.open_part(cfg, part)
    if part == "test":
        return _source_split(cfg, train=False)
    whole = _source_split(cfg, train=True)
    keep = np.ones(len(whole), dtype=bool)
    if cfg.val_fraction > 0:
        in_val = holdout.held_out(holdout.index_hashes(np.arange(len(whole)), "val"), cfg.val_fraction)
        keep = in_val if part == "val" else ~in_val
    elif part == "val":
        keep[:] = False
    if cfg.classes:
        keep &= _in_classes(cfg, whole.labels.numpy())
    if keep.all():
        return whole
    rows = torch.from_numpy(np.flatnonzero(keep))
    return Split(whole.images[rows].contiguous(), whole.labels[rows].contiguous())


def _in_classes(cfg: DataConfig, labels: np.ndarray) -> np.ndarray:
    names = CLASS_NAMES.get(cfg.name, ())
    wanted = []
    for name in cfg.classes:
        if name in names:
            wanted.append(names.index(name))
        elif name.isdigit() and int(name) < 10:
            wanted.append(int(name))
        else:
            raise UsageError(f"no class {name!r} in {cfg.name}", "data.classes",
                             f"use label numbers 0-9 or class names ({', '.join(names)})")
    return np.isin(labels, wanted)


def _source_split(cfg: DataConfig, train: bool) -> Split:
    if cfg.name in mnist.TORCHVISION_CLASSES:
        return mnist.load(cfg, train)
    if cfg.name == "digits":
        return digits.load(train)
    return synthetic.synthetic_split(cfg.synthetic_train if train else cfg.synthetic_test, seed=0 if train else 1)
