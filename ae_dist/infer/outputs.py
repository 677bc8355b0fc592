"""Outputs that every rank writes into its own rows of one preallocated ``.npy`` per array; a manifest last.

`Outputs.create` (rank 0) writes each file's ``.npy`` header and allocates the whole file on disk
(``posix_fallocate``: a full disk fails there, with ENOSPC, not later as a SIGBUS of a mapped
page); `Outputs.write_rows` puts rows at their byte offset with ``pwrite``, so each rank writes
only its own rows and nothing is gathered. The files are plain ``.npy`` (``np.load(path,
mmap_mode="r")``). ``manifest.json``, written atomically once every row is in, is what says the
files are complete: a folder without it holds no finished result, whatever else it holds.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
PLAN = ".plan.json"  # what the files being written are (run, weights, data, split, chunking): a resume must match it


@dataclass(frozen=True)
class Array:
    name: str
    dtype: str  # numpy dtype string, "<f4", "<i8"
    tail: tuple[int, ...] = ()  # shape of one row

    def shape(self, count: int) -> tuple[int, ...]:
        return (count, *self.tail)


class Outputs:
    """The arrays of one output folder, ``count`` rows each."""

    def __init__(self, folder: Path, count: int, arrays: list[Array]):
        self.folder, self.count, self.arrays = Path(folder), count, {a.name: a for a in arrays}
        self._fds: dict[str, int] = {}
        self._offsets: dict[str, int] = {}

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.npy"

    def header(self, array: Array) -> bytes:
        import io

        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, {"descr": np.dtype(array.dtype).str, "fortran_order": False,
                                                      "shape": array.shape(self.count)})
        return buffer.getvalue()

    def size(self, array: Array) -> int:
        return len(self.header(array)) + int(np.prod(array.shape(self.count), dtype=np.int64)) * np.dtype(array.dtype).itemsize

    def create(self) -> None:
        """Each file with its header and its full size allocated; files already of that header and size are kept."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for array in self.arrays.values():
            path, header = self.path(array.name), self.header(array)
            if path.is_file() and path.stat().st_size == self.size(array) and path.read_bytes()[:len(header)] == header:
                continue
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.pwrite(fd, header, 0)
                os.posix_fallocate(fd, 0, self.size(array))
            except OSError:
                os.close(fd)
                path.unlink(missing_ok=True)
                raise
            os.close(fd)

    def open(self) -> None:
        for array in self.arrays.values():
            self._fds[array.name] = os.open(self.path(array.name), os.O_RDWR)
            self._offsets[array.name] = len(self.header(array))

    def write_rows(self, start: int, rows: dict[str, np.ndarray]) -> None:
        """Rows ``start .. start + len`` of each array, at their byte offsets."""
        for name, values in rows.items():
            array = self.arrays[name]
            data = np.ascontiguousarray(values, dtype=array.dtype)
            row_bytes = int(np.prod(array.tail, dtype=np.int64)) * data.itemsize
            view = memoryview(data).cast("B")
            offset, written = self._offsets[name] + start * row_bytes, 0
            while written < len(view):
                written += os.pwrite(self._fds[name], view[written:], offset + written)

    def sync(self) -> None:
        for fd in self._fds.values():
            os.fdatasync(fd)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def remove(self) -> None:
        for array in self.arrays.values():
            self.path(array.name).unlink(missing_ok=True)


def write_json(path: Path, record: dict[str, Any]) -> None:
    """``record`` as JSON at ``path``, atomically (temporary name, fsync, rename); a failed write leaves nothing."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(record, indent=1, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at ``path``; None when missing or not an object."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
