"""Datasets held whole as uint8 tensors, and batches gathered by tensor indexing.

Each split is one ``(N, 1, 28, 28)`` uint8 tensor plus int64 labels, loaded once. A batch
is ``images[indices]``: no per-sample PIL decoding, no per-sample Python, no DataLoader
workers. The indices come from `DistributedSampler`, so with global batch B, rank r of W
takes every W-th index of the epoch's permutation and the union of the ranks' k-th
batches is the same B samples whatever W is.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from ae_dist.config import DataConfig
from ae_dist.errors import UsageError

TORCHVISION_CLASSES = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST"}
CLASS_NAMES = {  # label -> name, for the latent picture's legend
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "mnist": tuple("0123456789"),
    "digits": tuple("0123456789"),
    "synthetic": tuple(f"cell {row},{col}" for row in range(2) for col in range(5)),  # the blob's grid cell
}
DIGITS_TEST_SIZE = 297  # of scikit-learn's 1,797 images; the rest (1,500) train


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 (N, 1, 28, 28)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


def load_split(cfg: DataConfig, train: bool) -> Split:
    if cfg.name in TORCHVISION_CLASSES:
        return _load_torchvision(cfg, train)
    if cfg.name == "digits":
        return _load_digits(train)
    return synthetic_split(cfg.synthetic_train if train else cfg.synthetic_test, seed=0 if train else 1)


def _raw_folder(cfg: DataConfig) -> Path:
    return Path(cfg.root).expanduser() / TORCHVISION_CLASSES[cfg.name] / "raw"


def _offline_hint(cfg: DataConfig) -> str:
    cls = TORCHVISION_CLASSES[cfg.name]
    return (f"put the four {cls} IDX files (train/t10k images and labels, .gz or not) in {_raw_folder(cfg)}, "
            f"or run offline with data.name=digits (bundled) or data.name=synthetic")


def _check_md5(cfg: DataConfig, dataset_cls: type) -> None:
    """Compressed files that are present must match torchvision's published md5 sums."""
    from torchvision.datasets.utils import check_integrity

    for url, md5 in dataset_cls.resources:
        path = _raw_folder(cfg) / Path(url).name
        if path.exists() and not check_integrity(str(path), md5):
            raise UsageError("data file fails its md5 check", str(path),
                             "delete it and download again, or replace it with the original file")


def _decompress_missing(cfg: DataConfig) -> None:
    """torchvision reads the uncompressed IDX files; unpack any .gz that lacks its twin."""
    for gz in _raw_folder(cfg).glob("*-ubyte.gz"):
        target = gz.with_suffix("")
        if not target.exists():
            try:
                tmp = target.with_suffix(".tmp")
                tmp.write_bytes(gzip.decompress(gz.read_bytes()))
                tmp.replace(target)
            except (OSError, EOFError, gzip.BadGzipFile) as err:
                raise UsageError(f"cannot decompress data file ({err.__class__.__name__})", str(gz),
                                 "delete it and download again") from None


def _load_torchvision(cfg: DataConfig, train: bool) -> Split:
    import torchvision.datasets

    dataset_cls = getattr(torchvision.datasets, TORCHVISION_CLASSES[cfg.name])
    _check_md5(cfg, dataset_cls)
    _decompress_missing(cfg)
    root = str(Path(cfg.root).expanduser())
    needed = [_raw_folder(cfg) / Path(url).name.removesuffix(".gz") for url, _ in dataset_cls.resources]
    if not all(path.exists() for path in needed):
        if not cfg.download:
            raise UsageError(f"{cfg.name} files missing and data.download=false", str(_raw_folder(cfg)),
                             _offline_hint(cfg))
        _download(cfg, dataset_cls, root)
    try:
        dataset = dataset_cls(root, train=train, download=False)
    except Exception as err:  # torchvision's IDX reader: bad magic, truncated file
        raise _damaged(cfg, train, err) from None
    images, labels = dataset.data, dataset.targets
    if images.dtype != torch.uint8 or images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise _damaged(cfg, train, ValueError(f"images {tuple(images.shape)} vs labels {tuple(labels.shape)}"))
    return Split(images.unsqueeze(1).contiguous(), labels.long())


def _download(cfg: DataConfig, dataset_cls: type, root: str) -> None:
    try:
        dataset_cls(root, train=True, download=True)
    except (OSError, RuntimeError, ValueError) as err:  # URLError is an OSError
        raise UsageError(f"{cfg.name} is not in data.root and could not be downloaded ({err.__class__.__name__})",
                         str(_raw_folder(cfg)), _offline_hint(cfg)) from None


def _damaged(cfg: DataConfig, train: bool, err: Exception) -> UsageError:
    prefix = "train" if train else "t10k"
    names = sorted(p.name for p in _raw_folder(cfg).glob(f"{prefix}-*-ubyte"))
    culprit = _find_bad_idx(_raw_folder(cfg), names) or f"{_raw_folder(cfg)}/{prefix}-*-ubyte"
    return UsageError(f"damaged data file ({err.__class__.__name__}: {str(err)[:80]})", culprit,
                      "delete it and download again, or replace it with the original file")


def _find_bad_idx(folder: Path, names: list[str]) -> str | None:
    """The first IDX file whose magic number or length is wrong."""
    for name in names:
        data = (folder / name).read_bytes()
        ndim = data[3] if len(data) >= 4 else 0
        if len(data) < 4 + 4 * ndim or data[:2] != b"\0\0" or ndim not in (1, 3):
            return str(folder / name)
        dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
        if len(data) != 4 + 4 * ndim + torch.Size(dims).numel():
            return str(folder / name)
    return None


def _load_digits(train: bool) -> Split:
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


def synthetic_split(count: int, seed: int) -> Split:
    """Deterministic 28x28 images: one Gaussian blob per image, its class = its grid cell."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (count,), generator=gen)
    centre_x = (labels % 5).float() * 5 + 4 + torch.rand(count, generator=gen) * 2
    centre_y = (labels // 5).float() * 12 + 8 + torch.rand(count, generator=gen) * 4
    width = 1.5 + torch.rand(count, generator=gen) * 2.5
    grid = torch.arange(28, dtype=torch.float32)
    dx = (grid.view(1, 1, 28) - centre_x.view(-1, 1, 1)) ** 2
    dy = (grid.view(1, 28, 1) - centre_y.view(-1, 1, 1)) ** 2
    images = torch.exp(-(dx + dy) / (2 * width.view(-1, 1, 1) ** 2))
    return Split((images * 255).round().to(torch.uint8).unsqueeze(1), labels)


class EpochBatches:
    """This rank's batches of one epoch, from a `DistributedSampler` permutation.

    Only whole global batches are used (``len(split) // global_batch`` steps), so every
    rank takes the same number of equal steps and the run does not depend on world size.
    """

    def __init__(self, split: Split, global_batch: int, rank: int, world_size: int, seed: int):
        self.split = split
        self.local_batch = global_batch // world_size
        self.steps = len(split) // global_batch
        self.sampler = DistributedSampler(range(len(split)), num_replicas=world_size, rank=rank,
                                          shuffle=True, seed=seed, drop_last=False)

    def __len__(self) -> int:
        return self.steps

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
