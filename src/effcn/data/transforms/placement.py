"""Training augmentation ``place``: each digit moved to a uniformly random whole-digit position.

The affNIST protocol trains on MNIST digits placed at random on a 40x40 canvas
(:class:`effcn.data.affnist.MNIST40`); ``place`` re-places them every batch.
"""

from __future__ import annotations

from typing import Optional

import torch

from effcn.data.geometry import place_randomly


class RandomPlace(torch.nn.Module):
    """Each digit at a uniformly random position on its canvas (translation only).

    ``then`` optionally runs another augmentation afterwards (``place+paper``). Images
    (B, C, H, W) -> the same shape, dtype and device.
    """

    def __init__(self, then: Optional[torch.nn.Module] = None):
        super().__init__()
        self.then = then

    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        x = place_randomly(images, generator)
        return x if self.then is None else self.then(x, generator=generator)
