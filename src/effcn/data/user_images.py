"""Reading user image files for ``effcn predict`` (Pillow, imported only here).

Photos and scans of digits are not MNIST images: they are any size, often dark ink on a light
background, off-centre, in colour. ``preprocess="mnist"`` makes them the way MNIST's digits
were made (LeCun et al.): light ink on black, the ink's bounding box fitted into 20 x 20 pixels
keeping its aspect ratio (anti-aliased), placed in 28 x 28 so that its centre of mass is at the
centre (pixel 14, 14, where MNIST's digits have theirs: measured 14.0 +- 0.3 on the test set).
``preprocess="resize"`` only converts and resizes (other datasets); ``"none"`` takes the file as
the model sees it and refuses any other size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import EffcnError
from .image_files import MAX_PIXELS, image_array, pillow

PREPROCESS = ("mnist", "resize", "none")
MNIST_SIZE, MNIST_BOX, MNIST_CENTRE = 28, 20, 14.0
INK_THRESHOLD = 0.2   # of the ink's peak: fainter pixels are paper texture, shadows, noise


def read_image(path: str | Path, channels: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Image file -> float32 array in [0, 1]: (H, W) for 1 channel, (H, W, 3) for colour.

    The file is checked before it is decoded (:func:`~effcn.data.image_files.open_image`:
    at most ``max_pixels`` pixels, one frame, a pixel format that converts to 8 bits)."""
    return image_array(path, channels, max_pixels).astype(np.float32) / 255.0


def resize_float(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Anti-aliased resize of a float image (H, W) or (H, W, 3) with Pillow's Lanczos filter."""
    Image = pillow()
    if a.ndim == 2:
        out = Image.fromarray(a.astype(np.float32), mode="F").resize((width, height),
                                                                    Image.LANCZOS)
        return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)
    return np.stack([resize_float(a[..., c], height, width) for c in range(a.shape[2])], axis=-1)


def mnist_style(grey: np.ndarray, invert: bool | None = None, name: str = "the image"
                ) -> np.ndarray:
    """A greyscale digit of any size (H, W) in [0, 1] -> an MNIST-made digit (28, 28) in [0, 1].

    ``invert``: None detects the polarity (a light border means dark ink on light paper);
    True/False force it."""
    g = np.asarray(grey, dtype=np.float32)
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    background = float(np.median(border))
    if invert is None:
        invert = background > 0.5
    if invert:
        g, background = 1.0 - g, 1.0 - background
    ink = np.clip(g - background, 0.0, None)
    peak = float(ink.max())
    if peak < 0.1:
        raise EffcnError(f"{name} shows no digit: it is one flat shade (ink and background "
                         f"differ by {peak:.2f}); pass an image with a visible digit.")
    ink /= peak
    ink[ink < INK_THRESHOLD] = 0.0
    rows, cols = np.flatnonzero(ink.max(1)), np.flatnonzero(ink.max(0))
    crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = crop.shape
    scale = MNIST_BOX / max(h, w)
    box = resize_float(crop, max(1, round(h * scale)), max(1, round(w * scale)))
    # centre of mass of the fitted box -> the canvas centre (integer shift, as MNIST did)
    ys, xs = np.mgrid[0:box.shape[0], 0:box.shape[1]]
    mass = box.sum()
    top = int(round(MNIST_CENTRE - (ys * box).sum() / mass))
    left = int(round(MNIST_CENTRE - (xs * box).sum() / mass))
    top = min(max(top, 0), MNIST_SIZE - box.shape[0])    # never cut the digit
    left = min(max(left, 0), MNIST_SIZE - box.shape[1])
    canvas = np.zeros((MNIST_SIZE, MNIST_SIZE), np.float32)
    canvas[top:top + box.shape[0], left:left + box.shape[1]] = box
    return canvas


def load_image(path: str | Path, size: int, channels: int, invert: bool | None = None,
               preprocess: str = "none", max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Image file -> float tensor (channels, size, size) in [0, 1], as the model sees images.

    preprocess "none": the file must already be size x size (no silent resizing), and
    ``invert=True`` inverts it; "mnist": :func:`mnist_style` (1-channel models; a model larger
    than 28 x 28, e.g. the affNIST preset's 40 x 40, gets the digit centred on a black canvas);
    "resize": converted and resized to size x size. ``max_pixels``: see :func:`read_image`."""
    if preprocess not in PREPROCESS:
        raise EffcnError(f"unknown preprocessing {preprocess!r}; choose one of "
                         f"{', '.join(PREPROCESS)}.")
    a = read_image(path, channels, max_pixels)
    if preprocess == "mnist":
        if channels != 1 or size < MNIST_SIZE:
            raise EffcnError(f"MNIST-style preprocessing makes 28x28 greyscale digits, but the "
                             f"model takes {channels}-channel {size}x{size} images; use "
                             f"--preprocess resize or none.")
        digit = mnist_style(a, invert, name=f"image {path}")
        pad = (size - MNIST_SIZE) // 2
        a = np.pad(digit, ((pad, size - MNIST_SIZE - pad),) * 2)
    else:
        if a.shape[:2] != (size, size):
            if preprocess == "none":
                raise EffcnError(f"image {path} is {a.shape[1]}x{a.shape[0]} pixels but the "
                                 f"model takes {size}x{size}; resize it to {size}x{size} first "
                                 f"(or drop --no-preprocess).")
            a = resize_float(a, size, size)
        if invert:
            a = 1.0 - a
    x = torch.from_numpy(np.ascontiguousarray(a))
    return x.unsqueeze(0) if channels == 1 else x.permute(2, 0, 1)
