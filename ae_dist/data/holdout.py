"""Which rows a held-out split (test, validation) takes: a fixed hash of each row's key, never a shuffle.

A row belongs to a held-out split when the hash of its key, salted with the split's name, falls
below the split's fraction. Adding rows (files to a folder, rows to an array) never moves old
rows between splits, and the choice does not depend on the order the rows were listed in. Keys
are a row's relative path (folders) or its index (arrays, and the validation rows carved from a
built-in dataset's training split).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

SALTS = {"test": 0x7E57_0000_0000_0001, "val": 0x0FA1_0000_0000_0002}  # one stream per held-out split
_MASK = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


def index_hashes(indices: np.ndarray, split: str) -> np.ndarray:
    """uint64 hashes of row indices (splitmix64 of index ^ salt): vectorised, no Python per row."""
    with np.errstate(over="ignore"):
        z = (indices.astype(np.uint64) ^ np.uint64(SALTS[split])) + np.uint64(0x9E37_79B9_7F4A_7C15)
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58_476D_1CE4_E5B9)) & _MASK
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D0_49BB_1331_11EB)) & _MASK
        return z ^ (z >> np.uint64(31))


def path_hashes(paths: Sequence[str], split: str) -> np.ndarray:
    """uint64 hashes of relative paths (BLAKE2b of the salt and the UTF-8 path): the same on every machine."""
    salt = SALTS[split].to_bytes(8, "little")
    return np.fromiter((int.from_bytes(hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8,
                                                       salt=salt).digest(), "little") for path in paths),
                       dtype=np.uint64, count=len(paths))


def held_out(hashes: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask: the rows whose hash falls below ``fraction`` of the hash range."""
    if fraction <= 0:
        return np.zeros(len(hashes), dtype=bool)
    if fraction >= 1:
        return np.ones(len(hashes), dtype=bool)
    return hashes < np.uint64(int(fraction * 2**64))
