""".npy files as data: header checked before anything is mapped, never unpickled.

Images: uint8, or float16/float32 in [0, 1]; shaped (N, H, W) or (N, C, H, W) with C in {1, 3};
C order. The header's shape and dtype are checked against the file's size before the file is
mapped, so a truncated file is an error, not a SIGBUS on the first batch that reaches its end.
Labels: N integers (any integer dtype, stored as int64).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ae_dist.errors import UsageError

IMAGE_DTYPES = ("uint8", "float16", "float32")
CHUNK_ROWS = 4096


def read_header(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, offset of the data) of a .npy, after checking that the file holds all of it."""
    if not path.exists():
        raise UsageError("file does not exist", f"{key}={path}", "give the path of a .npy file")
    if not path.is_file():
        raise UsageError("not a file", f"{key}={path}", "give the path of a .npy file")
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(handle, max_header_size=10_000)
            offset = handle.tell()
    except OSError as err:
        raise UsageError(f"cannot read the file ({err.strerror})", f"{key}={path}", "check its permissions") from None
    except (ValueError, SyntaxError) as err:
        raise UsageError(f"not a .npy file ({str(err)[:60]})", f"{key}={path}", "save it with numpy.save") from None
    if dtype.hasobject:
        raise UsageError("the .npy holds Python objects (it would need unpickling, which is never done)",
                         f"{key}={path}", "save a numeric array (numpy.save of a uint8 or float32 array)")
    if fortran:
        raise UsageError("the .npy is in Fortran order", f"{key}={path}", "save numpy.ascontiguousarray(array)")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise UsageError(f"the .npy is truncated ({actual:,} of {expected:,} bytes)", f"{key}={path}",
                         "copy or save the file again")
    return tuple(int(side) for side in shape), dtype, offset


def check_images(path: Path, key: str) -> tuple[tuple[int, int, int, int], np.dtype]:
    """The (N, C, H, W) an image array is read as, and its dtype; one error line for anything else."""
    shape, dtype, _ = read_header(path, key)
    if dtype.name not in IMAGE_DTYPES:
        raise UsageError(f"images of dtype {dtype.name}", f"{key}={path}",
                         "save uint8 (0..255) or float16/float32 (0..1) images")
    if len(shape) == 3:
        shape = (shape[0], 1, shape[1], shape[2])
    if len(shape) != 4:
        raise UsageError(f"images of shape {shape}", f"{key}={path}", "save (N, H, W) or (N, C, H, W) images")
    if shape[1] not in (1, 3):
        hint = " (channels last? use array.transpose(0, 3, 1, 2))" if shape[3] in (1, 3) else ""
        raise UsageError(f"images with {shape[1]} channels{hint}", f"{key}={path}", "save (N, C, H, W) with C 1 or 3")
    if shape[0] < 1 or shape[2] < 1 or shape[3] < 1:
        raise UsageError(f"no images (shape {shape})", f"{key}={path}", "save at least one image")
    return shape, dtype


def map_images(path: Path, key: str) -> np.ndarray:
    """The images as a read-only-on-disk (copy-on-write) memory map of shape (N, C, H, W), any dtype it passed."""
    shape, _ = check_images(path, key)
    return np.load(path, mmap_mode="c", allow_pickle=False).reshape(shape)


def load_labels(path: Path, key: str, count: int) -> np.ndarray:
    shape, dtype, _ = read_header(path, key)
    if dtype.kind not in "iu" or len(shape) != 1:
        raise UsageError(f"labels of dtype {dtype.name} and shape {shape}", f"{key}={path}",
                         "save a 1-D array of integers")
    if shape[0] != count:
        raise UsageError(f"{shape[0]:,} labels for {count:,} images", f"{key}={path}", "give one label per image")
    labels = np.load(path, allow_pickle=False).astype(np.int64)
    if len(labels) and labels.min() < 0:
        raise UsageError(f"negative label {int(labels.min())}", f"{key}={path}", "use labels >= 0")
    return labels


def to_uint8(chunk: np.ndarray, first_row: int, path: Path, key: str) -> np.ndarray:
    """uint8 rows of an image chunk: as they are for uint8, round(x * 255) for floats in [0, 1] (else an error)."""
    if chunk.dtype == np.uint8:
        return chunk
    values = chunk.astype(np.float32)
    bad = ~np.isfinite(values) | (values < 0) | (values > 1)
    if bad.any():
        row = first_row + int(np.flatnonzero(bad.reshape(len(values), -1).any(axis=1))[0])
        value = values[row - first_row][bad[row - first_row]][0]
        raise UsageError(f"image {row} holds {value} (float images must lie in [0, 1], without NaN)", f"{key}={path}",
                         "scale the images to [0, 1], or save them as uint8")
    return np.rint(values * 255).astype(np.uint8)
