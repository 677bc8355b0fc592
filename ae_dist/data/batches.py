"""One rank's batches of an epoch, gathered by index from the permutation `DistributedSampler` defines.

A batch is ``images[indices]``: no per-sample PIL decoding, no per-sample Python, no DataLoader
workers. With global batch B, rank r of W takes every W-th index of the epoch's permutation, so
the union of the ranks' k-th batches is the same B samples whatever W is.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler

from ae_dist.data.splits import Split


class EpochBatches:
    """This rank's batches of one epoch, from a `DistributedSampler` permutation.

    Only whole global batches are used (``len(split) // global_batch`` steps), so every
    rank takes the same number of equal steps and the run does not depend on world size.
    """

    def __init__(self, split: Split, global_batch: int, rank: int, world_size: int, seed: int):
        self.split = split
        self.local_batch = global_batch // world_size
        self.rank, self.world_size = rank, world_size
        self.steps = len(split) // global_batch
        self.sampler = DistributedSampler(range(len(split)), num_replicas=world_size, rank=rank,
                                          shuffle=True, seed=seed, drop_last=False)

    def __len__(self) -> int:
        return self.steps

    def positions(self) -> torch.Tensor:
        """Where each row of this rank's batches sits in the global batch: row j of rank r is j * W + r
        (`DistributedSampler` deals the permutation round-robin), on the split's device."""
        return torch.arange(self.local_batch, device=self.split.images.device) * self.world_size + self.rank

    def epoch(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """Float batches in [0, 1] on the split's device, from batch ``start`` on."""
        self.sampler.set_epoch(epoch)
        order = torch.tensor(list(self.sampler), dtype=torch.int64)[: self.steps * self.local_batch]
        order = order.view(self.steps, self.local_batch).to(self.split.images.device)
        # index_select on whole rows: one copy per batch, ~10x cheaper than images[order[k]]
        rows = self.split.images.reshape(len(self.split), -1)
        shape = (self.local_batch, *self.split.images.shape[1:])
        for k in range(start, self.steps):
            yield rows.index_select(0, order[k]).view(shape).float().div_(255)
