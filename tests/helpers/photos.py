"""A real image folder: scikit-learn's two JPEG photographs cut into tiles of several sizes and modes, plus bad files.

`photo_folder` (session-wide fixture, in conftest) builds it once under pytest's base temp folder:

    photos/
      china/    tiles of china.jpg: JPEG (RGB, grayscale, CMYK, with an EXIF orientation), PNG (RGBA, palette)
      flower/   tiles of flower.jpg: JPEG, 16-bit PNG (I;16), an animated GIF, nested in sub/sub2
      9/ 10/    a few tiles each (natural order: 9 before 10)
      empty/    an empty class folder
    and the bad files, each in its class folder: a truncated JPEG, a zero-byte file, a text file named .png,
    a macOS ``._`` file, an unreadable file (a dangling symbolic link; mode 000 too, which root still reads),
    a 150-megapixel PNG, a symbolic link loop (a folder linking to its parent).

`GOOD` counts the images that decode; `BAD` lists the files that are skipped. A few hundred KB in all.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TILE = 48
BAD = ("china/truncated.jpg", "china/zero.jpg", "flower/notes.png", "flower/._tile.jpg", "flower/unreadable.jpg",
       "9/huge.png", "10/loop")


def photographs() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return list(load_sample_images().images)  # two 427x640 RGB uint8 photographs


def tiles(photo: np.ndarray, count: int, size: int, start: int = 0) -> list[Image.Image]:
    out = []
    for k in range(start, start + count):
        row, col = divmod(k * 37 % 60, 10)
        top, left = row * (photo.shape[0] - size) // 6, col * (photo.shape[1] - size) // 10
        out.append(Image.fromarray(photo[top:top + size, left:left + size]))
    return out


def png_header(width: int, height: int) -> bytes:
    """A PNG's signature, IHDR and one small IDAT chunk: what Pillow reads to learn the size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def make_photo_folder(root: Path) -> Path:
    china, flower = photographs()
    for name in ("china", "flower", "9", "10", "empty", "flower/sub/sub2"):
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, tile in enumerate(tiles(china, 30, TILE)):
        tile.save(root / "china" / f"tile{i}.jpg", quality=90)
    for i, tile in enumerate(tiles(china, 4, 64, 30)):
        tile.convert("L").save(root / "china" / f"gray{i}.jpg")
        tile.convert("CMYK").save(root / "china" / f"cmyk{i}.jpg")
        rgba = tile.convert("RGBA")
        rgba.putalpha(128)
        rgba.save(root / "china" / f"alpha{i}.png")
        tile.convert("P").save(root / "china" / f"palette{i}.png")
    rotated = tiles(china, 1, 80, 40)[0].crop((0, 0, 80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    rotated.save(root / "china" / "exif_rotated.jpg", exif=exif.tobytes())
    for i, tile in enumerate(tiles(flower, 30, TILE)):
        tile.save(root / "flower" / f"tile{i}.jpg", quality=90)
    for i, tile in enumerate(tiles(flower, 4, 56, 30)):
        deep = (np.asarray(tile.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        Image.fromarray(deep).save(root / "flower" / "sub" / f"deep{i}.png")  # I;16: 0..65535
        tile.save(root / "flower" / "sub" / "sub2" / f"nested{i}.png")
    frames = tiles(flower, 2, TILE, 40)
    frames[0].save(root / "flower" / "animated.gif", save_all=True, append_images=frames[1:])
    tiles(flower, 1, TILE, 50)[0].save(root / "flower" / "no_extension", format="PNG")  # recognised by content
    for i, tile in enumerate(tiles(china, 3, TILE, 45)):
        tile.save(root / "9" / f"img{i}.jpg")
    for i, tile in enumerate(tiles(flower, 3, TILE, 45)):
        tile.save(root / "10" / f"img{i}.png")
    # the bad files
    good = (root / "china" / "tile0.jpg").read_bytes()
    (root / "china" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "china" / "zero.jpg").write_bytes(b"")
    (root / "flower" / "notes.png").write_text("not an image\n")
    (root / "flower" / "._tile.jpg").write_bytes(b"\x00\x05\x16\x07" + b"\0" * 60)
    os.symlink("gone.jpg", root / "flower" / "unreadable.jpg")  # relative links: a copy of the folder keeps them
    locked = root / "flower" / "locked.jpg"
    locked.write_bytes(good)
    locked.chmod(0)
    (root / "9" / "huge.png").write_bytes(png_header(12_500, 12_000))  # 150 megapixels (only its header: never decoded)
    os.symlink(".", root / "10" / "loop")
    return root


def good_count(root: Path) -> int:
    """Images that decode (the unreadable mode-000 file decodes as root)."""
    locked = 0 if os.access(root / "flower" / "locked.jpg", os.R_OK) else 1
    return 30 + 16 + 1 + 30 + 8 + 1 + 1 + 3 + 3 + 1 - locked


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The photo-tile folder with its bad files, built once per session; tests must not write into it."""
    return make_photo_folder(tmp_path_factory.mktemp("photo-folder") / "photos")
