"""The baseline CNN: two conv + max-pool blocks and one linear layer (no capsules).

    image (B, C, 28, 28)
      -> Conv 5x5 'same', 16, ReLU, MaxPool 2                         (B, 16, 14, 14)
      -> Conv 5x5 'same', 32, ReLU, MaxPool 2                         (B, 32, 7, 7)
      -> Linear 32*7*7 -> n_classes                                   logits (B, n_classes)

Non-square inputs: ``image_width`` (0: square); the numbers presets take 28x56 (map 32x7x14, 100
classes) and 28x84 (32x7x21, 1,000 classes).

MNIST preset: 28,938 parameters, the CNN of an earlier PyTorch port (reported 99.3% on MNIST,
trained with cross-entropy). The forward returns a CapsNetOutput so the same trainer, eval and
predict work: ``logits`` holds the unnormalised class scores the loss is computed on, and
``lengths`` the scores every caller reads: class *probabilities* (softmax of the logits) with
loss="cross_entropy", or independent *sigmoid scores* with loss="margin"; there are no capsules,
no decoder, no routing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..capsules import margin_loss
from .common import CapsNetOutput
from .registry import register_model


@dataclass
class CNNConfig:
    """Everything needed to build the network; stored in every checkpoint."""
    image_size: int = 28                # pixels: the side of square inputs, the height of others
    image_width: int = 0                # 0: square (image_size wide); else the width in pixels
    in_channels: int = 1
    num_classes: int = 10
    channels: tuple = (16, 32)          # one conv 'same' + ReLU + max-pool 2 block per entry
    kernel_size: int = 5
    loss: str = "cross_entropy"         # cross_entropy (softmax scores) | margin (sigmoid scores)

    def __post_init__(self):
        self.channels = tuple(int(v) for v in self.channels)
        if self.loss not in ("cross_entropy", "margin"):
            raise ValueError(f"loss must be one of ('cross_entropy', 'margin'), got {self.loss!r}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd for 'same' padding, got {self.kernel_size}")
        if self.image_width < 0:
            raise ValueError(f"image_width must be >= 0 (0: square), got {self.image_width}")
        if min(self.feature_shape()) < 1:
            raise ValueError(f"{self.image_size}x{self.image_width or self.image_size} images are "
                             f"too small for {len(self.channels)} max-pool blocks")

    def feature_shape(self) -> tuple:
        """(h, w) of the last block's map (each block halves both sides, rounding down)."""
        h, w = self.image_size, self.image_width or self.image_size
        for _ in self.channels:
            h, w = h // 2, w // 2
        return h, w


class BaselineCNN(nn.Module):
    """See the module docstring. ``has_capsules = False``: capsule figures say so."""

    has_capsules = False

    def __init__(self, config: CNNConfig):
        super().__init__()
        self.config = c = config
        layers, width = [], c.in_channels
        for out_ch in c.channels:
            layers += [nn.Conv2d(width, out_ch, c.kernel_size, padding=c.kernel_size // 2),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            width = out_ch
        self.features = nn.Sequential(*layers)
        fh, fw = c.feature_shape()
        self.classifier = nn.Linear(width * fh * fw, c.num_classes)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) in [0, 1] -> unnormalised class scores (B, n_classes)."""
        return self.classifier(self.features(x).flatten(1))

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None,
                return_routing: bool = False) -> CapsNetOutput:
        """x (B, C, H, W) -> CapsNetOutput with ``logits`` (B, n_classes) and ``lengths`` =
        their softmax probabilities (cross_entropy) or sigmoid scores (margin); every other field
        is None. ``labels`` and ``return_routing`` are accepted for the common call shape and
        unused."""
        z = self.logits(x)
        scores = torch.softmax(z, dim=1) if self.config.loss == "cross_entropy" else torch.sigmoid(z)
        return CapsNetOutput(None, scores, logits=z)

    def classification_loss(self, out: CapsNetOutput, targets: torch.Tensor) -> torch.Tensor:
        """The training loss: cross-entropy on ``out.logits`` (in fp32, whatever autocast gave),
        or the margin loss on the sigmoid scores ``out.lengths``. targets (B,) labels or
        (B, n_classes) multi-hot (then the cross-entropy target is uniform over the true
        classes)."""
        if self.config.loss == "margin":
            return margin_loss(out.lengths, targets)
        logits = out.logits.float()
        if targets.dim() == 1:
            return F.cross_entropy(logits, targets)
        t = targets.to(logits.dtype)
        return F.cross_entropy(logits, t / t.sum(1, keepdim=True))


def mnist_config() -> CNNConfig:
    return CNNConfig()


def tiny_config() -> CNNConfig:
    return CNNConfig(channels=(4, 8))


register_model("cnn_baseline_mnist", BaselineCNN, mnist_config,
               "Baseline CNN, MNIST: 2x (conv 5x5 + max-pool), 16/32 channels, linear; "
               "cross-entropy")
register_model("cnn_baseline_tiny", BaselineCNN, tiny_config,
               "A tiny baseline CNN for tests and smoke runs")
register_model("cnn_baseline_numbers2", BaselineCNN,
               lambda: CNNConfig(image_width=56, num_classes=100),
               "Baseline CNN, 2-digit MNIST numbers (1x28x56, 100 classes)")
register_model("cnn_baseline_numbers3", BaselineCNN,
               lambda: CNNConfig(image_width=84, num_classes=1000),
               "Baseline CNN, 3-digit MNIST numbers (1x28x84, 1,000 classes)")
