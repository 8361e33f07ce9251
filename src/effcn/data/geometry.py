"""Batched image geometry shared by the datasets and the augmentations.

Everything works on whole batches ``(B, C, H, W)`` (``pad_to`` also on ``(N, H, W)``) on the
images' device, with no Python loop over samples: content margins, exact integer translation,
centred padding, uniformly random whole-content placement, per-sample crops, and affine warps
through ``affine_grid`` + ``grid_sample``. Shifts are ``(dy, dx)`` pixels, +dy down, +dx right.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F


_CONSTANTS: Dict[tuple, Tuple[torch.Tensor, ...]] = {}  # per (what, size, device): see _constants


def _constants(what: str, h: int, w: int, device: torch.device) -> Tuple[torch.Tensor, ...]:
    """Index and weight tensors that depend only on the image size, built once per device (so a
    batch does not spend a kernel per ``arange``):

    - ``"lines"``: ``(position, axis, low, high)``, each (H+W,) int64: the rows 0..H-1 then the
      columns 0..W-1, which axis each belongs to (0: rows, 1: columns), and 0 / H-1 or W-1;
    - ``"margins"``: ``(weights (4, H+W), sizes (4,))`` int64, see :func:`margins`.
    """
    key = (what, h, w, str(device))
    if key not in _CONSTANTS:
        rows, cols = torch.arange(h), torch.arange(w)
        zero_h, zero_w = torch.zeros(h, dtype=torch.long), torch.zeros(w, dtype=torch.long)
        if what == "lines":
            values = (torch.cat([rows, cols]), torch.cat([zero_h, zero_w + 1]),
                      torch.zeros(h + w, dtype=torch.long),
                      torch.cat([zero_h + h - 1, zero_w + w - 1]))
        else:  # margins: the first / last line with content, as negative numbers (see margins)
            values = (torch.stack([torch.cat([rows - h, zero_w]), torch.cat([-(rows + 1), zero_w]),
                                   torch.cat([zero_h, cols - w]), torch.cat([zero_h, -(cols + 1)])]),
                      torch.tensor([h, h, w, w]))
        _CONSTANTS[key] = tuple(v.to(device) for v in values)
    return _CONSTANTS[key]


def line_offsets(offsets: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, H+W) int64: each row index 0..H-1 minus ``offsets[:, 0]``, then each column index
    0..W-1 minus ``offsets[:, 1]``; ``offsets`` (B, 2) integer (dy, dx) pixels."""
    position, axis, _, _ = _constants("lines", h, w, offsets.device)
    return position - offsets.long()[:, axis]


def margins(images: torch.Tensor) -> torch.Tensor:
    """Empty rows/columns around each image's content: (B, 4) int64 (top, bottom, left, right).

    A pixel is content when it is > 0 in any channel; an all-zero image has margins 0.
    """
    _, _, h, w = images.shape
    occupied = (images > 0).any(dim=1)  # (B, H, W)
    lines = torch.cat([occupied.any(dim=2), occupied.any(dim=1)], dim=1)  # (B, H+W): rows, cols
    # The smallest of (row - H) over the occupied rows is (first - H), of -(row + 1) it is
    # -(last + 1); both lie in [-H, -1], so modulo H they are the top and bottom margins, and
    # without content (minimum 0) both are 0. Likewise for the columns.
    weights, sizes = _constants("margins", h, w, images.device)
    return torch.remainder((lines[:, None, :] * weights).amin(dim=2), sizes)


def translate(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Move (B, C, H, W) images by integer ``shifts`` (B, 2) (dy, dx) pixels, zero fill. Exact."""
    b, c, h, w = images.shape
    source = line_offsets(shifts.to(images.device), h, w)  # (B, H+W): source row, then column
    _, _, low, high = _constants("lines", h, w, images.device)
    clamped = source.clamp(low, high)
    valid = clamped == source
    out = images.gather(2, clamped[:, None, :h, None].expand(b, c, h, w))
    out = out.gather(3, clamped[:, None, None, h:].expand(b, c, h, w))
    return torch.where(valid[:, None, :h, None] & valid[:, None, None, h:], out, 0)


def pad_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad (N, H, W) or (N, C, H, W) images to ``size`` x ``size``, content centred
    (an odd remainder goes to the bottom/right)."""
    h, w = images.shape[-2:]
    if h > size or w > size:
        raise ValueError(f"cannot pad {h}x{w} images to the smaller {size}x{size}")
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(images, (left, size - w - left, top, size - h - top))


def placement_shifts(images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Integer shifts (B, 2) (dy, dx) that move each image's content (its bounding box of
    non-zero pixels) to a uniformly random position where it stays whole.

    ``generator`` may live on the images' device or on the CPU (then the draw is copied over).
    """
    top, bottom, left, right = margins(images).unbind(dim=1)
    device = generator.device if generator is not None else images.device
    u = torch.rand((images.shape[0], 2), generator=generator, device=device).to(images.device)
    span = torch.stack([top + bottom, left + right], dim=1) + 1  # positions per axis
    offset = torch.floor(u * span).long().clamp(max=span - 1)  # uniform in [0, span)
    return offset - torch.stack([top, left], dim=1)


def place_randomly(images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Move each (B, C, H, W) image's content to a uniformly random whole-content position.

    The result does not depend on where the content was before, so an already placed digit can be
    placed again (per-batch re-placement in training). Exact integer shifts, zero fill.
    """
    return translate(images, placement_shifts(images, generator))


def crop_batch(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """Crop a ``size`` x ``size`` window at per-sample ``top``/``left`` (B,) from (B, C, H, W)."""
    b, c, _, w = images.shape
    ar = torch.arange(size, device=images.device)
    rows = (top.to(images.device).long()[:, None] + ar)[:, None, :, None].expand(b, c, size, w)
    out = images.gather(2, rows)
    cols = (left.to(images.device).long()[:, None] + ar)[:, None, None, :].expand(b, c, size, size)
    return out.gather(3, cols)


def centre_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` window of (B, C, H, W) images."""
    h, w = images.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top:top + size, left:left + size]


def warp_affine(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample (B, C, H, W) images through per-sample affine maps ``theta`` (B, 2, 3).

    ``theta`` maps output to input coordinates normalised to [-1, 1] per axis (``affine_grid``'s
    convention, pixel centres: ``align_corners=False``); bilinear, zeros outside.
    """
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
