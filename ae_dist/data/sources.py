"""The one function that loads a split: it picks the source module by ``data.name``."""

from __future__ import annotations

from ae_dist.config import DataConfig
from ae_dist.data import digits, mnist, synthetic
from ae_dist.data.splits import Split


def load_split(cfg: DataConfig, train: bool) -> Split:
    if cfg.name in mnist.TORCHVISION_CLASSES:
        return mnist.load(cfg, train)
    if cfg.name == "digits":
        return digits.load(train)
    return synthetic.synthetic_split(cfg.synthetic_train if train else cfg.synthetic_test, seed=0 if train else 1)
