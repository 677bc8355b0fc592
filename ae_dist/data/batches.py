"""One rank's batches of an epoch, gathered by index from the permutation `DistributedSampler` defines.

A batch is ``images[indices]``: no per-sample PIL decoding, no per-sample Python, no DataLoader
workers. With global batch B, rank r of W takes every W-th index of the epoch's permutation, so
the union of the ranks' k-th batches is the same B samples whatever W is.

The permutation is computed as `DistributedSampler` computes it (``torch.randperm`` under the
seed ``seed + epoch``, padded by repeating its head, then every W-th from rank r), as one tensor:
no ``list(sampler)`` (a Python int per sample, ~46 bytes each). Memory per rank: this rank's
indices (8 bytes a sample / W), and the full permutation for the moment it is cut.

On CUDA with the images on the host (memory-mapped, or too large for the device), each batch is
gathered into one of two pinned buffers and copied with ``non_blocking=True``; a buffer is
reused only after the copy that read it has finished (its CUDA event).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ae_dist.data.splits import Split


def sampler_indices(size: int, world_size: int, rank: int, seed: int, epoch: int) -> torch.Tensor:
    """``torch.tensor(list(DistributedSampler(range(size), world_size, rank, shuffle=True, seed=seed)))`` after
    ``set_epoch(epoch)``, as int64, without a Python object per sample."""
    generator = torch.Generator()
    generator.manual_seed(seed + epoch)
    order = torch.randperm(size, generator=generator)
    total = -(-size // world_size) * world_size
    if total > size:  # DistributedSampler pads with the permutation's head, repeated as often as needed
        padding = total - size
        order = torch.cat([order, order.repeat(-(-padding // size))[:padding]])
    return order[rank:total:world_size].clone()


class EpochBatches:
    """This rank's batches of one epoch, from a `DistributedSampler` permutation.

    Only whole global batches are used (``len(split) // global_batch`` steps), so every
    rank takes the same number of equal steps and the run does not depend on world size.
    """

    def __init__(self, split: Split, global_batch: int, rank: int, world_size: int, seed: int,
                 device: torch.device | None = None):
        self.split = split
        self.local_batch = global_batch // world_size
        self.rank, self.world_size = rank, world_size
        self.steps = len(split) // global_batch
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.device = device if device is not None else split.images.device
        self._pinned: list[torch.Tensor] = []
        self._copied: list[torch.cuda.Event | None] = []

    def __len__(self) -> int:
        return self.steps

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's indices of the epoch, (steps, local batch)."""
        indices = sampler_indices(len(self.split), self.world_size, self.rank, self.seed, epoch)
        return indices[: self.steps * self.local_batch].view(self.steps, self.local_batch)

    def positions(self) -> torch.Tensor:
        """Where each row of this rank's batches sits in the global batch: row j of rank r is j * W + r
        (`DistributedSampler` deals the permutation round-robin), on the batches' device."""
        return torch.arange(self.local_batch, device=self.device) * self.world_size + self.rank

    def epoch(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """Float batches in [0, 1] on the device, from batch ``start`` on."""
        images = self.split.images
        order = self.order(epoch).to(images.device)
        # index_select on whole rows: one copy per batch, ~10x cheaper than images[order[k]]
        rows = images.reshape(len(self.split), -1)
        shape = (self.local_batch, *images.shape[1:])
        staged = self.device.type == "cuda" and images.device.type == "cpu"
        for k in range(start, self.steps):
            if staged:
                yield self._to_device(rows, order[k], k % 2).view(shape).float().div_(255)
            else:
                yield rows.index_select(0, order[k]).view(shape).float().div_(255)

    def _to_device(self, rows: torch.Tensor, indices: torch.Tensor, slot: int) -> torch.Tensor:
        if not self._pinned:
            self._pinned = [torch.empty((self.local_batch, rows.shape[1]), dtype=torch.uint8, pin_memory=True)
                            for _ in range(2)]
            self._copied = [None, None]
        event = self._copied[slot]
        if event is not None:
            event.synchronize()  # the copy that last read this buffer is done: it may be overwritten
        torch.index_select(rows, 0, indices, out=self._pinned[slot])
        batch = self._pinned[slot].to(self.device, non_blocking=True)
        self._copied[slot] = torch.cuda.Event()
        self._copied[slot].record()
        return batch
