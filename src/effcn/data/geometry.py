"""Batched image geometry shared by the datasets and the augmentations.

Everything works on whole batches ``(B, C, H, W)`` (``pad_to`` also on ``(N, H, W)``) on the
images' device, with no Python loop over samples: content margins, exact integer translation,
centred padding, uniformly random whole-content placement, per-sample crops, and affine warps
through ``affine_grid`` + ``grid_sample``. Shifts are ``(dy, dx)`` pixels, +dy down, +dx right.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def margins(images: torch.Tensor) -> torch.Tensor:
    """Empty rows/columns around each image's content: (B, 4) int64 (top, bottom, left, right).

    A pixel is content when it is > 0 in any channel; an all-zero image has margins 0.
    """
    occupied = (images > 0).any(dim=1)  # (B, H, W)
    rows, cols = occupied.any(dim=2), occupied.any(dim=1)  # (B, H), (B, W)

    def first_true(mask: torch.Tensor) -> torch.Tensor:  # argmax returns the first maximum
        return mask.to(torch.uint8).argmax(dim=1)

    out = torch.stack(
        [first_true(rows), first_true(rows.flip(1)), first_true(cols), first_true(cols.flip(1))],
        dim=1,
    )
    return out * rows.any(dim=1, keepdim=True)


def translate(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Move (B, C, H, W) images by integer ``shifts`` (B, 2) (dy, dx) pixels, zero fill. Exact."""
    b, c, h, w = images.shape
    shifts = shifts.to(device=images.device, dtype=torch.long)
    src_rows = torch.arange(h, device=images.device) - shifts[:, :1]  # (B, H)
    src_cols = torch.arange(w, device=images.device) - shifts[:, 1:]  # (B, W)
    valid = ((src_rows >= 0) & (src_rows < h))[:, None, :, None] & (
        (src_cols >= 0) & (src_cols < w)
    )[:, None, None, :]
    out = images.gather(2, src_rows.clamp(0, h - 1)[:, None, :, None].expand(b, c, h, w))
    out = out.gather(3, src_cols.clamp(0, w - 1)[:, None, None, :].expand(b, c, h, w))
    return out.masked_fill(~valid, 0)


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
