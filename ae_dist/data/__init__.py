"""The data: every source ends as uint8 arrays (N, C, H, W) plus int64 labels.

Owns one module per source (`mnist` for FashionMNIST and MNIST, `digits`, `synthetic`), the
`Split` they all return (`splits`), the dispatch by ``data.name`` (`sources`), and the batches
each rank gathers from a split by index (`batches`). Imports `ae_dist.config` and
`ae_dist.errors` only. Outside this package, import the names below from ``ae_dist.data``.
"""

from ae_dist.data.batches import EpochBatches
from ae_dist.data.sources import load_split
from ae_dist.data.splits import CLASS_NAMES, Split
from ae_dist.data.synthetic import synthetic_split

__all__ = ["CLASS_NAMES", "EpochBatches", "Split", "load_split", "synthetic_split"]
