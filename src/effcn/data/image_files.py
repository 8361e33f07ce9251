"""Opening image files that nobody vouched for (Pillow, imported only here).

Every image file effcn reads from a user (``effcn predict``, folder datasets) goes through
:func:`open_image`, which checks before it decodes:

- the pixel count the header declares, against ``max_pixels`` (default 89,478,485 = Pillow's
  own ``MAX_IMAGE_PIXELS``, a 9,459 x 9,459 photo), before any pixel is decoded: a 40,000 x 40,000
  "decompression bomb" of a few hundred bytes is refused in one sentence, and Pillow's
  DecompressionBombWarning/Error never surface;
- files that are not images, or truncated or corrupt ones (refused, naming the file);
- animations and multi-page files (GIF, APNG, TIFF, WebP with more than one frame): refused,
  since which frame is "the image" is the user's call (save that frame on its own);
- pixel formats, converted to 8 bits: 16-bit greyscale scaled by 255/65535, palette images to
  RGB(A), CMYK and YCbCr to RGB; float or signed images are refused.

Each refusal is an :class:`~effcn.errors.DataError` of one sentence naming the file.
"""

from __future__ import annotations

import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError, EffcnError

MAX_PIXELS = 89_478_485  # Pillow's MAX_IMAGE_PIXELS: 1024 * 1024 * 1024 // 4 // 3
EIGHT_BIT_MODES = ("L", "LA", "RGB", "RGBA")  # what open_image returns
_TO_RGB = {"1": "L", "P": "RGBA", "PA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB", "La": "LA",
           "RGBa": "RGBA", "RGBX": "RGB"}
# Decoding errors of a truncated or corrupt file (Pillow raises several kinds).
_BROKEN = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


def pillow():
    """PIL.Image, or one sentence saying how to install Pillow."""
    try:
        from PIL import Image
    except ImportError:
        raise EffcnError("reading images needs Pillow; install it with "
                         "pip install 'effcn[image]'.") from None
    return Image


def open_image(path: str | Path, max_pixels: int = MAX_PIXELS):
    """A checked, decoded image file as a Pillow image in mode L, LA, RGB or RGBA (8 bits).

    ``max_pixels``: the most pixels (width x height) a file may declare; checked from its header
    before decoding. Pillow refuses more than twice its own ``PIL.Image.MAX_IMAGE_PIXELS`` even
    if ``max_pixels`` allows it (raise that too for larger files)."""
    Image = pillow()
    from PIL import UnidentifiedImageError
    path = Path(path)
    if max_pixels < 1:
        raise EffcnError(f"the pixel limit must be at least 1, not {max_pixels}.")
    if not path.is_file():
        raise DataError(f"image {path} does not exist; check the path.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
        try:
            img = Image.open(path)
        except Image.DecompressionBombError as e:  # more than twice Pillow's own limit
            declared = re.search(r"\((\d+) pixels\)", str(e))
            raise _too_large(path, int(declared[1]) if declared else None, max_pixels) from None
        except UnidentifiedImageError:
            raise DataError(f"{path} is not a readable image file (Pillow does not recognise "
                            f"its format); pass a PNG, JPEG or other image file.") from None
        except _BROKEN as e:
            raise _broken(path, e) from None
        with img:
            width, height = img.size
            if width * height > max_pixels:
                raise _too_large(path, width * height, max_pixels, f"{width:,} x {height:,} = ")
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                raise DataError(f"{path} holds {frames} frames (an animation or a multi-page "
                                f"file), and which one is the image is not for effcn to guess; "
                                f"save that frame as an image file of its own.")
            try:
                img.load()
            except _BROKEN as e:
                raise _broken(path, e) from None
            return _eight_bit(img, path)


def image_array(path: str | Path, channels: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A checked image file as uint8 pixels: (H, W) for ``channels`` 1, (H, W, 3) for 3.

    Transparent pixels are composited onto white (paper); colour becomes grey by Pillow's
    ITU-R 601-2 luma, grey becomes colour by repeating it."""
    Image = pillow()
    img = open_image(path, max_pixels)
    if img.mode in ("LA", "RGBA"):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), rgba)
    return np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)


def _eight_bit(img, path: Path):
    """``img`` (loaded) in one of EIGHT_BIT_MODES."""
    Image = pillow()
    mode = img.mode
    if mode in EIGHT_BIT_MODES:
        return img.copy()
    if mode.startswith("I"):  # I;16, I;16B, I;16L: 16-bit grey; I: 32-bit ints (16-bit PNGs)
        a = np.asarray(img)
        if a.dtype.kind in "iu" and (a.size == 0 or (a.min() >= 0 and a.max() <= 65535)):
            scaled = (a.astype(np.float64) * (255.0 / 65535.0)).round().astype(np.uint8)
            return Image.fromarray(scaled, mode="L")
    elif mode in _TO_RGB:
        return img.convert(_TO_RGB[mode])
    raise DataError(f"image {path} has pixel format {mode} (floats or signed integers), which "
                    f"effcn does not convert without guessing its range; save it as 8- or "
                    f"16-bit greyscale or RGB, as a PNG for one.")


def _too_large(path: Path, pixels: int | None, max_pixels: int, sides: str = "") -> DataError:
    declared = (f"declares {sides}{pixels:,} pixels" if pixels is not None
                else "declares more pixels than Pillow will open")
    return DataError(f"image {path} {declared}, more than the limit of {max_pixels:,} (a "
                     f"'decompression bomb' guard checked before decoding); shrink it, or raise "
                     f"the limit (effcn predict --max-pixels; training: data.max_pixels) if you "
                     f"trust the file.")


def _broken(path: Path, err: BaseException) -> DataError:
    return DataError(f"image {path} is truncated or corrupt ({type(err).__name__}: "
                     f"{str(err).rstrip('.') or 'no detail'}); copy or save it again.")
