"""The prepared dataset: uint8 arrays per split, labels, and a manifest written last, under ``data.cache_dir``.

A prepared dataset is one folder ``<data.cache_dir>/<name>-<key>/`` (the key: a hash of the
source's resolved paths and of every option that changes the pixels or the splits) holding
``train.npy`` / ``val.npy`` / ``test.npy`` (uint8 (N, C, H, W), memory-mappable),
``<part>-labels.npy`` (int64) and ``manifest.json``. It is built in ``<name>-<key>.partial-<token>``
and renamed into place only once complete, so the folder's existence means the dataset is
complete; a killed preparation leaves a ``.partial-*`` folder that the next one deletes. A uint8
array used whole is not copied: its manifest names the source file, checked by size and mtime.

The manifest holds the source, the options, a digest of the file list, the class names, every
skipped file with its reason, library versions and a digest of each array; its ``digest`` (of
everything but paths, times and versions) is the dataset's identity, which the run keeps.

Writing is split by rows: rank r of W decodes rows ``[r*N//W, (r+1)*N//W)`` of the file list
and writes them with ``pwrite`` into the preallocated files (``posix_fallocate``: a full disk
fails up front, never as a SIGBUS), then rank 0 closes the gaps the skipped files left, in row
order, so the bytes are the same whatever the world size.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ae_dist.errors import UsageError

FORMAT = 1
PARTS = ("train", "val", "test")
MANIFEST = "manifest.json"
FILES = "files.jsonl"
PLAN = "plan.json"
HEADER_BYTES = 128  # .npy header of every prepared array (version 1.0, padded with spaces)
WRITE_ROWS = 256  # rows decoded between two writes


def npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    """A .npy version 1.0 header of exactly HEADER_BYTES bytes, so the shape can be rewritten in place."""
    text = "{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}".format(
        np.dtype(dtype).str, "".join(f"{side}, " for side in shape).rstrip(" ") if len(shape) > 1 else f"{shape[0]},")
    body = text.ljust(HEADER_BYTES - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")


def dataset_dir(cache_dir: Path, name: str, key_fields: dict) -> Path:
    key = hashlib.blake2b(json.dumps({"format": FORMAT, **key_fields}, sort_keys=True).encode(), digest_size=8).hexdigest()
    return cache_dir / f"{name}-{key}"


def read_manifest(folder: Path) -> dict | None:
    """The manifest of a complete prepared dataset, or None when there is none."""
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise UsageError(f"damaged manifest ({err.__class__.__name__})", str(folder / MANIFEST),
                         f"delete {folder} and prepare again") from None


def identity(manifest: dict) -> str:
    """The dataset's identity: a digest of everything but where it lies, when it was made and with what."""
    kept = {key: manifest[key] for key in ("format", "name", "options", "class_names", "skipped") if key in manifest}
    kept["parts"] = {part: {k: v for k, v in info.items() if k in ("count", "shape", "digest", "labels_digest")}
                     for part, info in manifest["parts"].items()}
    kept["files"] = manifest.get("files", {}).get("digest", "")
    return hashlib.blake2b(json.dumps(kept, sort_keys=True).encode(), digest_size=16).hexdigest()


def file_digest(path: Path, offset: int = 0) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        handle.seek(offset)
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    import PIL

    return {"numpy": np.__version__, "pillow": PIL.__version__, "python": sys.version.split()[0]}


# ---- the work folder: plan, per-rank rows, gaps closed, published ------------------------------------------------


@dataclass
class Plan:
    """What a preparation writes: rows per part (before skipping), the image shape, the class names."""

    parts: dict[str, int]  # part -> rows listed (in PARTS order in the combined row list)
    shape: tuple[int, int, int]
    class_names: list[str]

    def offsets(self) -> dict[str, int]:
        out, start = {}, 0
        for part in PARTS:
            if part in self.parts:
                out[part] = start
                start += self.parts[part]
        return out

    @property
    def rows(self) -> int:
        return sum(self.parts.values())


def start_work(work: Path, plan: Plan, rows: Iterator[list]) -> None:
    """Rank 0: the work folder with the plan, the row list (one JSON list per line) and the preallocated arrays."""
    work.mkdir(parents=True)
    with open(work / FILES, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    row_bytes = int(np.prod(plan.shape))
    for part, count in plan.parts.items():
        _allocate(work / f"{part}.npy", (count, *plan.shape), row_bytes * count)
    (work / PLAN).write_text(json.dumps({"parts": plan.parts, "shape": plan.shape, "class_names": plan.class_names}))


def _allocate(path: Path, shape: tuple[int, ...], data_bytes: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, npy_header(shape, "u1"))
        if data_bytes:
            os.posix_fallocate(fd, HEADER_BYTES, data_bytes)
    except OSError as err:
        raise UsageError(f"cannot make room for the prepared data ({err.strerror}, {data_bytes / 1e9:.2f} GB)",
                         f"data.cache_dir={path.parent.parent}", "free space there or choose another data.cache_dir") from None
    finally:
        os.close(fd)


def read_plan(work: Path) -> Plan:
    plan = json.loads((work / PLAN).read_text())
    return Plan(plan["parts"], tuple(plan["shape"]), plan["class_names"])


def share(rows: int, rank: int, world_size: int) -> tuple[int, int]:
    return rows * rank // world_size, rows * (rank + 1) // world_size


def rows_of(work: Path, lo: int, hi: int) -> Iterator[list]:
    with open(work / FILES, encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            if index >= hi:
                return
            if index >= lo:
                yield json.loads(line)


def write_share(work: Path, rank: int, world_size: int, decode: Callable[[list], np.ndarray],
                progress: Callable[[int, int], None] | None = None) -> None:
    """This rank's rows: decoded by ``decode(row)`` (which raises ``BadRow`` for a file to skip), written in place."""
    plan = read_plan(work)
    lo, hi = share(plan.rows, rank, world_size)
    offsets = plan.offsets()
    bounds = [(part, offsets[part], offsets[part] + count) for part, count in plan.parts.items()]
    row_bytes = int(np.prod(plan.shape))
    fds = {part: os.open(work / f"{part}.npy", os.O_WRONLY) for part in plan.parts}
    skipped, notes, pending, pending_start = [], [], [], lo
    try:
        def flush(next_index: int) -> None:
            nonlocal pending, pending_start
            if pending:
                part, start, _ = next(b for b in bounds if b[1] <= pending_start < b[2])
                data = b"".join(pending)
                os.pwrite(fds[part], data, HEADER_BYTES + (pending_start - start) * row_bytes)
            pending, pending_start = [], next_index

        for index, row in zip(range(lo, hi), rows_of(work, lo, hi)):
            if any(index == b[1] for b in bounds):  # a part starts here: its rows go to another file
                flush(index)
            try:
                pixels, note = decode(row)
                if note:
                    notes.append((index, row[1], note))
            except BadRow as err:
                skipped.append((index, row[1], str(err)))
                pixels = np.zeros(plan.shape, dtype=np.uint8)
            pending.append(pixels.tobytes())
            if len(pending) >= WRITE_ROWS:
                flush(index + 1)
                if progress:
                    progress(index + 1 - lo, hi - lo)
        flush(hi)
        for fd in fds.values():
            os.fsync(fd)
    except OSError as err:
        raise UsageError(f"cannot write the prepared data ({err.strerror})", f"data.cache_dir={work.parent}",
                         "free space there or choose another data.cache_dir") from None
    finally:
        for fd in fds.values():
            os.close(fd)
    if progress:
        progress(hi - lo, hi - lo)
    tmp = work / f".done-{rank}.tmp"
    tmp.write_text(json.dumps({"skipped": skipped, "notes": notes}))
    os.replace(tmp, work / f"done-{rank}.json")


class BadRow(Exception):
    """The row's file is skipped; the message is the reason."""


def wait_for(paths: list[Path], alive: Callable[[], bool], poll_s: float = 0.2) -> None:
    while not all(path.exists() for path in paths):
        if not alive():
            raise UsageError("the preparation stopped before it was complete", str(paths[0].parent),
                             "run the same command again")
        time.sleep(poll_s)


def finish(work: Path, world_size: int, labels: np.ndarray, manifest: dict) -> dict:
    """Rank 0, once every rank is done: gaps closed, labels written, digests, manifest written last."""
    plan = read_plan(work)
    skipped, notes = [], []
    for rank in range(world_size):
        done = json.loads((work / f"done-{rank}.json").read_text())
        skipped += done["skipped"]
        notes += done["notes"]
    skipped.sort()
    notes.sort()
    bad = np.zeros(plan.rows, dtype=bool)
    bad[[index for index, *_ in skipped]] = True
    row_bytes = int(np.prod(plan.shape))
    parts = {}
    for part, start in plan.offsets().items():
        count = plan.parts[part]
        keep = ~bad[start:start + count]
        kept = int(keep.sum())
        _close_gaps(work / f"{part}.npy", keep, row_bytes, (kept, *plan.shape))
        part_labels = np.ascontiguousarray(labels[start:start + count][keep], dtype=np.int64)
        write_array(work / f"{part}-labels.npy", part_labels)
        parts[part] = {"file": f"{part}.npy", "labels": f"{part}-labels.npy", "count": kept, "shape": list(plan.shape),
                       "digest": file_digest(work / f"{part}.npy", HEADER_BYTES),
                       "labels_digest": hashlib.blake2b(part_labels.tobytes(), digest_size=16).hexdigest()}
    manifest = {**manifest, "format": FORMAT, "class_names": plan.class_names, "parts": parts,
                "skipped": manifest.get("skipped", []) + [[path, reason] for _, path, reason in skipped],
                "notes": [[path, note] for _, path, note in notes], "versions": versions()}
    manifest["skipped"].sort()
    manifest["digest"] = identity(manifest)
    write_json(work / MANIFEST, manifest)
    for name in [FILES, PLAN, *(f"done-{rank}.json" for rank in range(world_size))]:
        (work / name).unlink()
    return manifest


def _close_gaps(path: Path, keep: np.ndarray, row_bytes: int, shape: tuple[int, ...]) -> None:
    """Move the kept rows down over the skipped ones (in order), then cut the file and rewrite its header."""
    fd = os.open(path, os.O_RDWR)
    try:
        first_gap = int(np.argmin(keep)) if not keep.all() else len(keep)
        write_at = first_gap
        index = first_gap
        while index < len(keep):
            if not keep[index]:
                index += 1
                continue
            run = index
            while run < len(keep) and keep[run] and run - index < 4096:
                run += 1
            data = os.pread(fd, (run - index) * row_bytes, HEADER_BYTES + index * row_bytes)
            os.pwrite(fd, data, HEADER_BYTES + write_at * row_bytes)
            write_at += run - index
            index = run
        os.ftruncate(fd, HEADER_BYTES + shape[0] * row_bytes)
        os.pwrite(fd, npy_header(shape, "u1"), 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_array(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=1, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def publish(work: Path, final: Path) -> None:
    """Rename the complete work folder into place (an older version of it is moved away first, then deleted)."""
    old = None
    if final.exists():
        old = final.with_name(f"{final.name}.old-{work.name.rsplit('-', 1)[-1]}")
        os.rename(final, old)
    os.rename(work, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_leftovers(final: Path) -> list[Path]:
    """Folders of killed preparations of this dataset (call with the preparation's lock held)."""
    gone = []
    for path in final.parent.glob(f"{final.name}.partial-*"):
        shutil.rmtree(path, ignore_errors=True)
        gone.append(path)
    for path in final.parent.glob(f"{final.name}.old-*"):
        shutil.rmtree(path, ignore_errors=True)
    return gone


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
