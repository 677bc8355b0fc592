"""One image file -> uint8 (C, H, W): the conversion policy of ``data.name=folder``, in one place.

- Recognised by content (Pillow's ``open`` reads the header), never by extension.
- Size first: an image of more than ``max_pixels`` pixels is refused before it is decoded, unless
  it is a JPEG that decodes at 1/2, 1/4 or 1/8 of its size (``Image.draft``) under the cap. JPEGs
  are always decoded at the smallest such reduction that is still at least ``data.size``.
- EXIF orientation applied (``ImageOps.exif_transpose``); animated images: the first frame (noted).
- Modes: 16- and 32-bit integer images (I;16, I) are scaled from 0..65535 to 0..255 (value / 257,
  rounded), never clipped; float images (F) are taken as 0..1; transparency (RGBA, LA, PA, palette
  with a transparent colour) is composited on white; CMYK, YCbCr, LAB, HSV and palette images are
  converted to RGB; then to L (ITU-R 601 luma) or RGB as ``data.channels`` says.
- ``data.fit``: crop (scale to cover data.size, keep the centre; the default), pad (scale to fit,
  black borders, image centred) or stretch (scale each axis on its own). Bilinear resampling with
  antialiasing (Pillow's ``resize``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

Image.MAX_IMAGE_PIXELS = None  # the cap is data.max_pixels, checked below before decoding
RESAMPLE = Image.Resampling.BILINEAR
WHITE = (255, 255, 255, 255)


class BadImage(Exception):
    """This file is skipped; the message is its reason, as the manifest lists it."""


def decode(path: str, size: tuple[int, int], channels: int, fit: str, max_pixels: int) -> tuple[np.ndarray, str]:
    """(uint8 array (C, H, W), a note such as "animated: first frame" or "") for the image at ``path``."""
    height, width = size
    try:
        with Image.open(path) as image:
            note = "animated: first frame" if getattr(image, "n_frames", 1) > 1 else ""
            if image.format == "JPEG":
                image.draft("L" if channels == 1 and image.mode == "L" else "RGB", _draft_target(image.size, size, fit))
            pixels = image.size[0] * image.size[1]
            if pixels > max_pixels:
                raise BadImage(f"{image.size[0]}x{image.size[1]} = {pixels / 1e6:.0f} megapixels, more than "
                               f"data.max_pixels={max_pixels}")
            image.load()
            image = ImageOps.exif_transpose(image)
            image = _to_mode(image, channels)
            image = _fit(image, (width, height), fit)
            array = np.asarray(image, dtype=np.uint8)
    except BadImage:
        raise
    except Image.DecompressionBombError as err:
        raise BadImage(str(err)[:120]) from None
    except Image.UnidentifiedImageError:
        raise BadImage("not an image Pillow can read") from None
    except OSError as err:  # truncated data, unreadable file, symlink loop
        raise BadImage(f"{err.strerror or str(err)}"[:120] or err.__class__.__name__) from None
    except (ValueError, SyntaxError, EOFError, MemoryError, TypeError, IndexError, KeyError) as err:  # damaged headers
        raise BadImage(f"damaged image ({err.__class__.__name__}: {str(err)[:80]})") from None
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return np.ascontiguousarray(array), note


def _draft_target(source: tuple[int, int], size: tuple[int, int], fit: str) -> tuple[int, int]:
    """The smallest (w, h) a JPEG may be decoded at and still give ``size`` without upscaling."""
    height, width = size
    if fit == "stretch":
        return width, height
    scale = max(width / source[0], height / source[1]) if fit == "crop" else min(width / source[0], height / source[1])
    return max(1, int(source[0] * scale)), max(1, int(source[1] * scale))


def _to_mode(image: Image.Image, channels: int) -> Image.Image:
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        if mode == "I" and values.size and values.max() > 65535:
            values = values / 2**16  # 32-bit data: its top 16 bits
        image = Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), "L")
    elif mode == "F":
        image = Image.fromarray(np.clip(np.rint(np.nan_to_num(np.asarray(image)) * 255), 0, 255).astype(np.uint8), "L")
    elif mode == "1":
        image = image.convert("L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode in ("L", "RGB") and "transparency" in image.info):
        image = Image.alpha_composite(Image.new("RGBA", image.size, WHITE), image.convert("RGBA"))
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX ...
    return image.convert("L" if channels == 1 else "RGB")


def _fit(image: Image.Image, size: tuple[int, int], fit: str) -> Image.Image:
    if image.size == size:
        return image
    if fit == "stretch":
        return image.resize(size, RESAMPLE)
    if fit == "crop":
        return ImageOps.fit(image, size, RESAMPLE)
    return ImageOps.pad(image, size, RESAMPLE, color=0)
