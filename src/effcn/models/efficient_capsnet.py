"""Efficient-CapsNet (Mazzia, Salvetti, Chiaberge 2021), built from a dataclass config.

    image (B, C, H, W)
      -> stem: 4 convs ('valid'), each conv -> activation -> norm      feature map (B, 128, h, w)
      -> PrimaryCaps: depthwise conv -> reshape -> squash              (B, 16, 8)
      -> SelfAttentionRouting                                          (B, n_classes, 16)
      -> lengths |v_j| are the class scores                            (B, n_classes)
      -> decoder on the capsules masked to one class                   (B, C, H, W) in [0, 1]

The decoder is fully connected (MNIST) or, for smallNORB, an upsampling conv decoder
(``decoder="conv"``); ``decoder_conditioning="embedding"`` feeds it the kept capsule and a class
embedding instead of all masked capsules (ClassEmbeddingDecoder: for many classes). Presets
(registered at the bottom): mnist (161,824 parameters without the decoder), multimnist, affnist
(40x40), smallnorb (151,664), cifar10, numbers2 / numbers3 (28x56 and 28x84 MNIST numbers, 100
and 1,000 classes), and tiny variants for tests.

Any input size: ``image_size`` is the height, ``image_width`` the width (0: square), and the
depthwise kernel of the primary capsules is derived from them (``primary_kernel=0``, the
default): it covers the whole final feature map, whatever its shape (9x9 for 28x28, 11x11 for
32x32, 9x23 for 28x56), so the primary layer always yields stem-channels / primary_dim capsules.
A non-zero ``primary_kernel`` is a square kernel of that side (MultiMNIST: 5, stride 2).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import torch
import torch.nn as nn

from ..capsules import PrimaryCaps, SelfAttentionRouting, keras_he_normal_
from ..errors import ConfigError
from .common import CapsuleClassifier, build_decoder
from .registry import register_model


@dataclass
class EfficientCapsNetConfig:
    """Everything needed to build the network; stored in every checkpoint."""
    image_size: int = 28                # pixels: the side of square inputs, the height of others
    image_width: int = 0                # 0: square (image_size wide); else the width in pixels
    in_channels: int = 1
    num_classes: int = 10
    # (out_channels, kernel, stride) of the four 'valid' convs
    stem: tuple = ((32, 5, 1), (64, 3, 1), (64, 3, 1), (128, 3, 2))
    activation: str = "relu"            # relu | leaky_relu (slope 0.3, smallNORB)
    norm: str = "batch"                 # batch | instance
    # BatchNorm running-average momentum (PyTorch convention). 0.01 = Keras' 0.99, the authors'
    # value; short CPU runs use 0.1 so the running statistics keep up within a few hundred steps.
    bn_momentum: float = 0.01
    primary_kernel: int = 0             # 0: derived, the whole final map; k: a k x k kernel
    # glorot_uniform: the authors' (Keras' default, their depthwise conv names none);
    # he_normal: effcn's init before 2026-12, kept to reproduce earlier runs.
    primary_init: str = "glorot_uniform"
    # InstanceNorm's gamma and beta: "uniform" in [-0.05, 0.05] as the authors' tensorflow-addons
    # layer starts them; "ones_zeros" as PyTorch does (effcn before 2026-12).
    instance_norm_init: str = "uniform"
    primary_stride: int = 1
    primary_dim: int = 8
    caps_dim: int = 16
    routing: str = "self_attention"     # self_attention | uniform (ablation: c = 1/n_out)
    caps_rank: int = 0                  # 0: full W (n_out, n_in, d_in, d_out); r: factorised
    decoder: str = "fc"                 # fc | conv (upsampling, smallNORB) | none
    decoder_hidden: tuple = (512, 1024)  # fc: hidden units; conv: channels of the upsampling convs
    # What the decoder reads: masked (the paper: all n_classes capsules, all but one zeroed, so
    # its first layer has n_classes * D inputs) | embedding (the kept capsule and a learned
    # D-dim embedding of its class: 2D inputs whatever the number of classes).
    decoder_conditioning: str = "masked"

    def __post_init__(self):
        self.stem = tuple(tuple(int(v) for v in layer) for layer in self.stem)
        self.decoder_hidden = tuple(int(v) for v in self.decoder_hidden)
        for name, allowed in (("activation", ("relu", "leaky_relu")), ("norm", ("batch", "instance")),
                              ("primary_init", ("glorot_uniform", "he_normal")),
                              ("instance_norm_init", ("uniform", "ones_zeros")),
                              ("routing", ("self_attention", "uniform")),
                              ("decoder", ("fc", "conv", "none")),
                              ("decoder_conditioning", ("masked", "embedding"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("image_width", "primary_kernel"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: see the field), got {getattr(self, name)}")
        self._check_input_size()
        self.num_primary_caps()  # the primary outputs split into capsules (else ValueError)

    def image_shape(self) -> tuple:
        """(H, W) of the inputs."""
        return self.image_size, self.image_width or self.image_size

    def feature_map_shape(self) -> tuple:
        """(h, w) of the stem's output map."""
        shape = list(self.image_shape())
        for _, k, s in self.stem:
            shape = [(side - k) // s + 1 for side in shape]
        return tuple(shape)

    def smallest_input_side(self) -> int:
        """The smallest input height (and width) the stem maps to a feature map the primary
        kernel fits: each 'valid' conv (k, stride s) needs (side - 1) * s + k input pixels.
        InstanceNorm needs more than one pixel per map in training, so a 2x2 map at least."""
        side = max(self.primary_kernel, 2 if self.norm == "instance" else 1)
        for _, k, s in reversed(self.stem):
            side = (side - 1) * s + k
        return side

    def _check_input_size(self):
        (h, w), smallest = self.image_shape(), self.smallest_input_side()
        if min(h, w) < smallest:
            raise ConfigError(
                f"{h}x{w} inputs are too small for this Efficient-CapsNet's stem of "
                f"{len(self.stem)} 'valid' convs" + (f" and its {self.primary_kernel}x"
                                                    f"{self.primary_kernel} primary kernel"
                                                    if self.primary_kernel else "")
                + f"; the smallest input that works is {smallest}x{smallest} (each side at "
                f"least {smallest} pixels), so resize or pad the images.")

    def feature_map_size(self) -> int:
        """The side of a square feature map (feature_map_shape for any shape)."""
        h, w = self.feature_map_shape()
        if h != w:
            raise ValueError(f"the {h}x{w} feature map is not square; use feature_map_shape()")
        return h

    def primary_kernel_shape(self) -> tuple:
        """(kh, kw) of the depthwise kernel: primary_kernel square, or 0 -> the whole map."""
        if self.primary_kernel == 0:
            return self.feature_map_shape()
        return self.primary_kernel, self.primary_kernel

    def describe_primary(self) -> str:
        """One line on the primary capsules' depthwise kernel, e.g. "primary capsules: 11x11
        depthwise kernel for 32x32 input"."""
        (kh, kw), (h, w) = self.primary_kernel_shape(), self.image_shape()
        line = f"primary capsules: {kh}x{kw} depthwise kernel for {h}x{w} input"
        if self.primary_kernel:
            fh, fw = self.feature_map_shape()
            line += f" (set by primary_kernel={self.primary_kernel}"
            line += f", stride {self.primary_stride}" if self.primary_stride != 1 else ""
            line += f", on the {fh}x{fw} feature map)"
        return line

    def num_primary_caps(self) -> int:
        """Primary capsules after reshaping the depthwise conv output (the input size is checked
        at construction, so the kernel fits the map)."""
        channels = self.stem[-1][0]
        (fh, fw), (kh, kw) = self.feature_map_shape(), self.primary_kernel_shape()
        oh, ow = (fh - kh) // self.primary_stride + 1, (fw - kw) // self.primary_stride + 1
        total = channels * oh * ow
        if total % self.primary_dim:
            raise ValueError(f"the {total} primary outputs ({channels} channels x {oh}x{ow}) do not "
                             f"split into {self.primary_dim}-D capsules; choose a primary_dim that "
                             f"divides {total}")
        return total // self.primary_dim


class EfficientCapsNet(CapsuleClassifier):
    """Efficient-CapsNet; see the module docstring for the layer stack."""

    def __init__(self, config: EfficientCapsNetConfig):
        super().__init__()
        self.config = config
        c = config
        layers, channels = [], c.in_channels
        for out_ch, k, s in c.stem:
            conv = nn.Conv2d(channels, out_ch, k, stride=s)
            keras_he_normal_(conv.weight, fan_in=channels * k * k)
            nn.init.zeros_(conv.bias)
            act = nn.ReLU(inplace=True) if c.activation == "relu" else nn.LeakyReLU(0.3, inplace=True)
            # Keras defaults: BN momentum 0.99 (PyTorch 0.01), epsilon 1e-3.
            norm = (nn.BatchNorm2d(out_ch, eps=1e-3, momentum=c.bn_momentum) if c.norm == "batch"
                    else nn.InstanceNorm2d(out_ch, eps=1e-3, affine=True))
            if c.norm == "instance" and c.instance_norm_init == "uniform":
                # Follows the authors' code: tensorflow-addons' InstanceNormalization there
                # starts gamma AND beta uniform in [-0.05, 0.05], not at 1 and 0.
                nn.init.uniform_(norm.weight, -0.05, 0.05)
                nn.init.uniform_(norm.bias, -0.05, 0.05)
            # Follows the authors' code: conv -> activation -> norm (not conv -> norm -> act).
            layers += [conv, act, norm]
            channels = out_ch
        self.stem = nn.Sequential(*layers)
        n_primary = c.num_primary_caps()
        self.primary = PrimaryCaps(channels, c.primary_kernel_shape(), n_primary, c.primary_dim,
                                   stride=c.primary_stride, init=c.primary_init)
        self.digit_caps = SelfAttentionRouting(n_primary, c.primary_dim, c.num_classes, c.caps_dim,
                                               uniform=c.routing == "uniform", rank=c.caps_rank)
        self.decoder = build_decoder(c.decoder, c.num_classes, c.caps_dim, c.decoder_hidden,
                                     (c.in_channels, *c.image_shape()), c.decoder_conditioning)

    def primary_capsules(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> the stem's map -> depthwise conv -> (B, n_primary, primary_dim)."""
        return self.primary(self.stem(x))

    def describe_primary(self) -> str:
        """e.g. "primary capsules: 11x11 depthwise kernel for 32x32 input" (for a log line)."""
        return self.config.describe_primary()


def mnist_config() -> EfficientCapsNetConfig:
    return EfficientCapsNetConfig()


def multimnist_config() -> EfficientCapsNetConfig:
    """The authors' MultiMNIST model: 36x36 inputs, strides 2 in the last two convs (map 6x6) and
    their 5x5 stride-2 depthwise kernel, set explicitly (it does not cover the whole map)."""
    return EfficientCapsNetConfig(image_size=36, stem=((32, 5, 1), (64, 3, 1), (64, 3, 2), (128, 3, 2)),
                                  primary_kernel=5, primary_stride=2)


def affnist_config() -> EfficientCapsNetConfig:
    """40x40 inputs (the affNIST protocol), the MNIST preset with only the input size changed:
    the same four convs take 40 -> 36 -> 34 -> 32 -> 15, so the derived 15x15 depthwise kernel
    (MNIST: 9x9 on its 9x9 map) again sees the whole map and yields 128 values = 16
    capsules x 8 dims. Everything after the primary capsules is the MNIST preset's; the decoder
    outputs 40x40. The depthwise layer grows from 10,496 to 28,928 parameters."""
    return EfficientCapsNetConfig(image_size=40)


def tiny_config() -> EfficientCapsNetConfig:
    """A small 28x28 variant for tests (same structure, far fewer channels)."""
    return EfficientCapsNetConfig(stem=((8, 5, 1), (16, 3, 1), (16, 3, 1), (32, 3, 2)),
                                  decoder_hidden=(32, 64))


def smallnorb_config() -> EfficientCapsNetConfig:
    """The authors' smallNORB model: 2x48x48 stereo crops, 5 classes, conv decoder."""
    return EfficientCapsNetConfig(image_size=48, in_channels=2, num_classes=5,
                                  stem=((32, 7, 2), (64, 3, 1), (64, 3, 1), (128, 3, 2)),
                                  activation="leaky_relu", norm="instance",
                                  decoder="conv", decoder_hidden=(64, 128, 128))


def smallnorb_tiny_config() -> EfficientCapsNetConfig:
    """smallNORB's structure with few channels, for tests."""
    return dataclasses.replace(smallnorb_config(), stem=((8, 7, 2), (16, 3, 1), (16, 3, 1), (32, 3, 2)),
                               decoder_hidden=(8, 8, 8))


def cifar10_config() -> EfficientCapsNetConfig:
    """Our choice for 3x32x32 CIFAR-10 (the authors gave none): the MNIST stem widened for
    colour (feature map 128x11x11 -> derived depthwise 11x11 -> 16 capsules x 8), BatchNorm and
    ReLU as for MNIST, and smallNORB's upsampling conv decoder (3x32x32 output)."""
    return EfficientCapsNetConfig(image_size=32, in_channels=3,
                                  decoder="conv", decoder_hidden=(64, 128, 128))


def numbers_config(digits: int) -> EfficientCapsNetConfig:
    """MNIST numbers of ``digits`` digits side by side: 1x28x(28 * digits), 10**digits classes.
    The MNIST preset with only what the input forces changed: the same four convs take 28x56 to a
    9x23 map (28x84: 9x37), the derived depthwise kernel covers that whole map and again yields 16 capsules of 8 dimensions; the FC decoder outputs the composed image. Full
    class-capsule weights; ``caps_rank=R`` factorises them (docs: models)."""
    return EfficientCapsNetConfig(image_width=28 * digits, num_classes=10 ** digits)


register_model("efficient_capsnet_mnist", EfficientCapsNet, mnist_config,
               "Efficient-CapsNet, MNIST preset (28x28x1, 10 classes)")
register_model("efficient_capsnet_multimnist", EfficientCapsNet, multimnist_config,
               "Efficient-CapsNet, MultiMNIST preset (36x36x1, stride-2 stem)")
register_model("efficient_capsnet_affnist", EfficientCapsNet, affnist_config,
               "Efficient-CapsNet, 40x40 preset for the affNIST protocol (MNIST stem)")
register_model("efficient_capsnet_tiny", EfficientCapsNet, tiny_config,
               "A tiny 28x28 Efficient-CapsNet for tests and smoke runs")
register_model("efficient_capsnet_smallnorb", EfficientCapsNet, smallnorb_config,
               "Efficient-CapsNet, smallNORB preset (2x48x48, 5 classes, LeakyReLU+InstanceNorm, "
               "conv decoder)")
register_model("efficient_capsnet_smallnorb_tiny", EfficientCapsNet, smallnorb_tiny_config,
               "A tiny smallNORB-shaped (2x48x48, conv decoder) Efficient-CapsNet for tests")
register_model("efficient_capsnet_cifar10", EfficientCapsNet, cifar10_config,
               "Efficient-CapsNet, CIFAR-10 preset (3x32x32, our choices; conv decoder)")
register_model("efficient_capsnet_numbers2", EfficientCapsNet, lambda: numbers_config(2),
               "Efficient-CapsNet, 2-digit MNIST numbers (1x28x56, 100 classes)")
register_model("efficient_capsnet_numbers3", EfficientCapsNet, lambda: numbers_config(3),
               "Efficient-CapsNet, 3-digit MNIST numbers (1x28x84, 1,000 classes)")
