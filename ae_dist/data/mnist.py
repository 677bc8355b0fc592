"""FashionMNIST and MNIST through torchvision's own dataset classes and file layout under ``data.root``.

The IDX files are md5-checked where torchvision publishes sums; without them and without a
network the error names the folder to fill and the offline sources.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import torch

from ae_dist.config import DataConfig
from ae_dist.data.splits import Split
from ae_dist.errors import UsageError

TORCHVISION_CLASSES = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST"}


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


def load(cfg: DataConfig, train: bool) -> Split:
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
