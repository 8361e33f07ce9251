"""Batched preprocessing and augmentation for smallNORB and CIFAR-10, on any device.

Both are registered in :mod:`effcn.data.transforms.registry` ("smallnorb", "cifar10") and are
called by the trainer as ``aug(images, generator)`` on float batches (B, C, H, W) in [0, 1].
An augmentation that also changes what the model sees at evaluation (standardisation, a centre
crop) has an ``eval_transform(images)`` method, which evaluation and ``effcn eval`` apply.
Every step works on the whole batch at once: no Python loop over samples.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from effcn.data.geometry import centre_crop, crop_batch


def standardize(images: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Zero mean and unit standard deviation per image and channel (over H and W)."""
    mean = images.mean(dim=(-2, -1), keepdim=True)
    std = images.std(dim=(-2, -1), keepdim=True, correction=0)
    return (images - mean) / std.clamp_min(eps)


def _draw_device(images: torch.Tensor, generator: Optional[torch.Generator]):
    return generator.device if generator is not None else images.device


class SmallNORBPreprocess(nn.Module):
    """smallNORB as in the authors' code: standardise, resize 96 -> 64, then a random 48 crop
    with random brightness and contrast in training, the centre 48 crop at evaluation.

    Images (B, 2, 96, 96) float (any scale) -> (B, 2, 48, 48) standardised values.

    Differs from the authors' code on purpose: they standardise each channel with the mean and
    standard deviation of the whole split (the test split with its own statistics); here each
    image's channel is standardised with its own, which needs no dataset statistics (the same
    in training, evaluation and on a single image) and never looks at other test images. Their
    training already shifts each image's brightness by up to +-2 and scales its contrast by 0.5
    to 1.5 after standardising, so the trained network is used to this variation.
    """

    def __init__(self, resize: int = 64, crop: int = 48, max_delta: float = 2.0,
                 contrast: Tuple[float, float] = (0.5, 1.5)):
        super().__init__()
        self.resize, self.crop, self.max_delta, self.contrast = resize, crop, max_delta, contrast

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Standardise, then bilinear resize (half-pixel centres, no antialias: tf.image.resize)."""
        x = standardize(images.float())
        return F.interpolate(x, size=(self.resize, self.resize), mode="bilinear",
                             align_corners=False, antialias=False)

    def eval_transform(self, images: torch.Tensor) -> torch.Tensor:
        return centre_crop(self.prepare(images), self.crop)

    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        x = self.prepare(images)
        b, dev = len(x), _draw_device(x, generator)
        span = self.resize - self.crop + 1  # tf.image.random_crop: offsets 0..resize-crop
        top = torch.randint(0, span, (b,), generator=generator, device=dev)
        left = torch.randint(0, span, (b,), generator=generator, device=dev)
        delta = (torch.rand(b, generator=generator, device=dev) * 2 - 1) * self.max_delta
        lo, hi = self.contrast
        factor = lo + torch.rand(b, generator=generator, device=dev) * (hi - lo)
        x = crop_batch(x, top, left, self.crop)
        x = x + delta.to(x.device, x.dtype)[:, None, None, None]  # same delta for all channels
        mean = x.mean(dim=(-2, -1), keepdim=True)  # tf.image.adjust_contrast: per channel
        return (x - mean) * factor.to(x.device, x.dtype)[:, None, None, None] + mean

    def extra_repr(self) -> str:
        return (f"resize={self.resize}, crop={self.crop}, max_delta={self.max_delta}, "
                f"contrast={self.contrast}")


class CIFARAugment(nn.Module):
    """Standard CIFAR augmentation: zero-pad by ``padding``, random crop back to the original
    size, horizontal flip with probability 0.5. (B, C, H, W) -> same shape.

    No mean/std normalisation: inputs stay in [0, 1] because the decoder's sigmoid output is
    compared with them (the reconstruction loss), and the stem's BatchNorm rescales features.
    """

    def __init__(self, padding: int = 4, flip_prob: float = 0.5):
        super().__init__()
        self.padding, self.flip_prob = padding, flip_prob

    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        b, _, h, w = images.shape
        dev, p = _draw_device(images, generator), self.padding
        top = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=dev)
        left = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=dev)
        flip = torch.rand(b, generator=generator, device=dev) < self.flip_prob
        x = crop_batch(F.pad(images, (p, p, p, p)), top, left, h)
        return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)

    def extra_repr(self) -> str:
        return f"padding={self.padding}, flip_prob={self.flip_prob}"
