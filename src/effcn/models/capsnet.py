"""The original CapsNet (Sabour, Frosst, Hinton 2017), the capsule baseline.

    image (B, C, H, W)
      -> Conv 9x9, 256, ReLU                                          (B, 256, H-8, W-8)
      -> primary capsules: Conv 9x9 stride 2, 32 maps x 8D, squash    (B, 32*6*6 = 1152, 8)
      -> digit capsules with routing-by-agreement (3 iterations)      (B, n_classes, 16)
      -> lengths |v_j| are the class scores                           (B, n_classes)
      -> the same FC decoder as Efficient-CapsNet on the masked capsules

MNIST preset: 6,804,224 parameters without the decoder (the paper's "6.8M"), 8,215,568 with it.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
import torch.nn as nn

from ..capsules import DynamicRouting, squash_hinton
from .common import CapsuleClassifier, build_decoder
from .registry import register_model


@dataclass
class CapsNetConfig:
    """Everything needed to build the network; stored in every checkpoint."""
    image_size: int = 28                # square inputs, pixels
    in_channels: int = 1
    num_classes: int = 10
    conv_channels: int = 256
    conv_kernel: int = 9
    primary_maps: int = 32              # capsule maps of the primary layer
    primary_dim: int = 8
    primary_kernel: int = 9
    primary_stride: int = 2
    caps_dim: int = 16
    routing_iterations: int = 3         # the paper's r: r - 1 agreement updates (1 = uniform)
    decoder: str = "fc"                 # fc | none
    decoder_hidden: tuple = (512, 1024)

    def __post_init__(self):
        self.decoder_hidden = tuple(int(v) for v in self.decoder_hidden)
        if self.decoder not in ("fc", "none"):
            raise ValueError(f"decoder must be one of ('fc', 'none'), got {self.decoder!r}")
        if self.routing_iterations < 1:
            raise ValueError(f"routing_iterations must be at least 1 (1 = uniform coupling), "
                             f"got {self.routing_iterations}")

    def primary_side(self) -> int:
        side = self.image_size - self.conv_kernel + 1
        side = (side - self.primary_kernel) // self.primary_stride + 1
        if side < 1:
            raise ValueError(f"image_size {self.image_size} is too small for a {self.conv_kernel}"
                             f"x{self.conv_kernel} conv and {self.primary_kernel}x"
                             f"{self.primary_kernel} primary capsules")
        return side

    def num_primary_caps(self) -> int:
        return self.primary_maps * self.primary_side() ** 2


class PrimaryCapsConv(nn.Module):
    """Conv (no activation) -> ``maps`` capsule maps of ``dim``-D vectors, squashed (Hinton).

    (B, C, H, W) -> (B, maps * h * w, dim); capsule k of map m at (y, x) is channels
    m*dim .. m*dim + dim - 1 of the conv output at (y, x).
    """

    def __init__(self, in_channels: int, maps: int, dim: int, kernel_size: int, stride: int):
        super().__init__()
        self.maps, self.dim = maps, dim
        self.conv = nn.Conv2d(in_channels, maps * dim, kernel_size, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        b, _, h, w = x.shape
        x = x.view(b, self.maps, self.dim, h, w).permute(0, 1, 3, 4, 2)
        return squash_hinton(x.reshape(b, self.maps * h * w, self.dim))


class CapsNet(CapsuleClassifier):
    """Sabour et al. 2017; see the module docstring for the layer stack. The routing output of
    ``forward(x, return_routing=True)``: the final coupling coefficients c and routing logits b."""

    def __init__(self, config: CapsNetConfig):
        super().__init__()
        self.config = c = config
        self.conv = nn.Sequential(nn.Conv2d(c.in_channels, c.conv_channels, c.conv_kernel),
                                  nn.ReLU(inplace=True))
        self.primary = PrimaryCapsConv(c.conv_channels, c.primary_maps, c.primary_dim,
                                       c.primary_kernel, c.primary_stride)
        self.digit_caps = DynamicRouting(c.num_primary_caps(), c.primary_dim, c.num_classes,
                                         c.caps_dim, iterations=c.routing_iterations)
        self.decoder = build_decoder(c.decoder, c.num_classes, c.caps_dim, c.decoder_hidden,
                                     (c.in_channels, c.image_size, c.image_size))

    def primary_capsules(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> conv + ReLU -> primary capsules (B, 1152, 8) on MNIST."""
        return self.primary(self.conv(x))

    def class_lengths(self, capsules: torch.Tensor) -> torch.Tensor:
        """|v_j| without the epsilon under the root that Efficient-CapsNet's authors add."""
        return torch.linalg.vector_norm(capsules, dim=-1)


def mnist_config() -> CapsNetConfig:
    return CapsNetConfig()


def tiny_config() -> CapsNetConfig:
    """A small 28x28 variant for tests (same structure, far fewer channels)."""
    return CapsNetConfig(conv_channels=16, primary_maps=4, primary_dim=4, caps_dim=8,
                         decoder_hidden=(32, 64))


register_model("capsnet_mnist", CapsNet, mnist_config,
               "Original CapsNet (Sabour et al. 2017), MNIST, 3 routing iterations")
register_model("capsnet_tiny", CapsNet, tiny_config,
               "A tiny 28x28 CapsNet with routing-by-agreement for tests and smoke runs")
