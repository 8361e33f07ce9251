"""Digits on a larger canvas: centred padding and uniformly random placement, batched.

Used by the affNIST protocol (MNIST digits at random positions on a 40x40 canvas) and by the
generators of affNIST-style and MultiMNIST images. Everything works on whole batches
``(B, C, H, W)`` on the images' device, with no Python loop over samples.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from effcn.data.augment import AUGMENTATIONS, MNISTAugment, margins, translate


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
    """Move each (B, C, H, W) image's content to a uniformly random whole-digit position.

    The result does not depend on where the content was before, so an already placed digit can be
    placed again (per-batch re-placement in training). Exact integer shifts, zero fill.
    """
    return translate(images, placement_shifts(images, generator))


class RandomPlace(torch.nn.Module):
    """Training augmentation ``place``: each digit at a uniformly random position on its canvas
    (the affNIST protocol's training data: translation only, no other augmentation).

    ``then`` optionally runs another augmentation afterwards (``place+paper``).
    """

    def __init__(self, then: Optional[torch.nn.Module] = None):
        super().__init__()
        self.then = then

    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        x = place_randomly(images, generator)
        return x if self.then is None else self.then(x, generator=generator)


AUGMENTATIONS["place"] = RandomPlace
# Random placement, then the paper's rotate, squish and erase (its shift is replaced by placement).
AUGMENTATIONS["place+paper"] = lambda: RandomPlace(MNISTAugment.from_spec("rotate+squish+erase"))
