"""Reading user image files for ``effcn predict`` (Pillow, imported only here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import EffcnError

# Modes whose pixels are 8-bit intensities or colours that convert to them without guessing.
CONVERTIBLE_MODES = ("L", "LA", "P", "RGB", "RGBA", "1")


def load_image(path: str | Path, size: int, channels: int, invert: bool = False) -> torch.Tensor:
    """Image file -> float tensor (channels, size, size) in [0, 1].

    The image must already be size x size (no silent resizing: it would change what the model
    sees); colour images are converted to grey for 1-channel models and vice versa.
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise EffcnError("reading images needs Pillow; install it with "
                         "pip install 'effcn[image]'.") from None
    path = Path(path)
    if not path.is_file():
        raise EffcnError(f"image {path} does not exist; check the path.")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in CONVERTIBLE_MODES:
                raise EffcnError(f"image {path} has mode {img.mode}, which effcn does not convert; "
                                 f"save it as 8-bit greyscale or RGB (e.g. PNG mode L).")
            if img.size != (size, size):
                raise EffcnError(f"image {path} is {img.size[0]}x{img.size[1]} pixels but the "
                                 f"model takes {size}x{size}; resize it to {size}x{size} first.")
            img = img.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise EffcnError(f"{path} is not a readable image ({type(e).__name__}); pass a PNG or "
                         f"JPEG file.") from None
    x = torch.from_numpy(arr.copy())
    x = x.unsqueeze(0) if channels == 1 else x.permute(2, 0, 1)
    return 1 - x if invert else x
