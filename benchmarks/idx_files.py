"""FashionMNIST as torchvision keeps it: ``<root>/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``.

IDX (LeCun's format): a big-endian magic number (two zero bytes, the dtype 0x08 = unsigned
byte, the number of dimensions), one big-endian uint32 per dimension, then the bytes. The
images are `ae_dist.data.synthetic_split`'s (one Gaussian blob each), the labels ``i % 10``.
Used by ``benchmarks/throughput.py`` and by the data and fault tests::

    raw = write_fashion_mnist(tmp_path, train=120, test=40)
"""

from __future__ import annotations

import struct
from pathlib import Path

import torch

from ae_dist.data import synthetic_split

IMAGE_NAMES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
LABEL_NAMES = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}


def write_idx(path: Path, array: torch.Tensor) -> None:
    """One IDX file of unsigned bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    path.write_bytes(header + array.to(torch.uint8).contiguous().numpy().tobytes())


def write_fashion_mnist(root: Path, train: int = 120, test: int = 40) -> Path:
    """``train`` + ``test`` images and labels in torchvision's raw layout (uncompressed); the raw folder."""
    raw = Path(root) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for part, count, seed in (("train", train, 0), ("test", test, 1)):
        write_idx(raw / IMAGE_NAMES[part], synthetic_split(count, seed=seed).images.squeeze(1))
        write_idx(raw / LABEL_NAMES[part], torch.arange(count) % 10)
    return raw


def has_fashion_mnist(root: Path) -> bool:
    raw = Path(root) / "FashionMNIST" / "raw"
    return all((raw / name).exists() for name in (*IMAGE_NAMES.values(), *LABEL_NAMES.values()))
