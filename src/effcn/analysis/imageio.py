"""Writing images: numpy arrays as PNG and animated GIF (Pillow), matplotlib figures as PNG.

Every file is written to a temporary file and renamed, like everything else effcn writes.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..errors import EffcnError
from ..io import atomic_write_bytes


def pil_image():
    """The PIL.Image module, or a clear error naming the extra to install."""
    try:
        from PIL import Image
    except ImportError:
        raise EffcnError("writing figures needs Pillow; install it with "
                         "pip install 'effcn[viz]'.") from None
    return Image


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend."""
    try:
        import matplotlib
    except ImportError:
        raise EffcnError("plotting needs matplotlib; install it with "
                         "pip install 'effcn[viz]'.") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """uint8 array (H, W) grey or (H, W, 3) RGB -> PNG file."""
    Image = pil_image()
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def save_gif(frames: list[np.ndarray], path: str | Path, seconds_per_frame: float = 0.5) -> Path:
    """uint8 frames (H, W) of one size -> an animated GIF that loops forever, one frame each.

    Pillow merges identical consecutive frames; callers label frames (e.g. with the epoch) so
    that every frame stays distinct and the frame count matches the input.
    """
    if not frames:
        raise EffcnError(f"no frames to assemble into {path}; train with --set run.recon_every=1 "
                         f"so that reconstruction grids are saved.")
    Image = pil_image()
    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], loop=0,
                   duration=int(seconds_per_frame * 1000), disposal=1)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def read_png(path: str | Path) -> np.ndarray:
    Image = pil_image()
    with Image.open(path) as img:
        return np.asarray(img.convert("L") if img.mode in ("L", "P", "1") else img).copy()


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """A matplotlib figure -> PNG file; the figure is closed afterwards."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def caption_strip(text: str, width: int, height: int = 12) -> np.ndarray:
    """A black strip (height, width) uint8 with ``text`` in white (Pillow's built-in font)."""
    Image = pil_image()
    from PIL import ImageDraw
    img = Image.new("L", (width, height), 0)
    ImageDraw.Draw(img).text((2, 0), text, fill=255)
    return np.asarray(img).copy()
