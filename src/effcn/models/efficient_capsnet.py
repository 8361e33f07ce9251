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

Inputs may be non-square: ``image_size`` is the height, ``image_width`` the width (0: square),
and ``primary_kernel=0`` makes the depthwise kernel cover the whole final map, whatever its shape.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn as nn

from ..capsules import (PrimaryCaps, SelfAttentionRouting, capsule_lengths, decode_masked,
                        keras_he_normal_)
from .registry import register_model


class CapsNetOutput(NamedTuple):
    """What a capsule network's forward returns.

    capsules (B, n_classes, D); lengths (B, n_classes) in [0, 1); reconstruction (B, C, H, W) or
    None (no decoder); routing: coupling coefficients c (B, n_out, n_in), summing to 1 over n_out,
    and agreement: the routing logits A (B, n_out, n_in), both only when asked for.
    """
    capsules: torch.Tensor
    lengths: torch.Tensor
    reconstruction: Optional[torch.Tensor] = None
    routing: Optional[torch.Tensor] = None
    agreement: Optional[torch.Tensor] = None


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
    primary_kernel: int = 9             # side of the depthwise kernel; 0: the whole final map
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

    def image_shape(self) -> tuple:
        """(H, W) of the inputs."""
        return self.image_size, self.image_width or self.image_size

    def feature_map_shape(self) -> tuple:
        """(h, w) of the stem's output map."""
        shape = list(self.image_shape())
        for _, k, s in self.stem:
            shape = [(side - k) // s + 1 for side in shape]
        return tuple(shape)

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

    def num_primary_caps(self) -> int:
        """Primary capsules after reshaping the depthwise conv output."""
        channels = self.stem[-1][0]
        (fh, fw), (kh, kw) = self.feature_map_shape(), self.primary_kernel_shape()
        oh, ow = (fh - kh) // self.primary_stride + 1, (fw - kw) // self.primary_stride + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"feature map {fh}x{fw} is smaller than the primary kernel {kh}x{kw} "
                             f"for {self.image_shape()[0]}x{self.image_shape()[1]} images")
        total = channels * oh * ow
        if total % self.primary_dim:
            raise ValueError(f"{total} primary outputs do not split into {self.primary_dim}-D capsules")
        return total // self.primary_dim


class FCDecoder(nn.Module):
    """Masked capsules (B, n_classes * D) -> image (B, C, H, W), sigmoid output."""

    def __init__(self, in_features: int, hidden: tuple, out_shape: tuple):
        super().__init__()
        layers, width = [], in_features
        for h in hidden:
            linear = nn.Linear(width, h)
            keras_he_normal_(linear.weight, fan_in=width)
            nn.init.zeros_(linear.bias)
            layers += [linear, nn.ReLU(inplace=True)]
            width = h
        out = nn.Linear(width, out_shape[0] * out_shape[1] * out_shape[2])
        # The authors' last layer uses glorot_normal (truncated, std sqrt(2/(fan_in+fan_out))).
        keras_he_normal_(out.weight, fan_in=width + out.out_features)
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(*layers, out, nn.Sigmoid())
        self.out_shape = out_shape

    def forward(self, masked: torch.Tensor) -> torch.Tensor:
        return self.net(masked).view(-1, *self.out_shape)


class ConvDecoder(nn.Module):
    """Masked capsules (B, n_classes * D) -> image (B, C, H, W), the authors' smallNORB generator.

    Dense (no activation) to a 1-channel ``seed x seed`` map, then for each width in ``hidden``:
    bilinear upsampling x2 and a 3x3 'valid' conv with leaky ReLU; a last 3x3 'valid' conv to C
    channels with a sigmoid. Each stage maps a side s to 2s - 2, so ``seed`` is solved from the
    image size (8 for 48, 6 for 32). Follows the authors' code: the leaky ReLU here is
    tf.nn.leaky_relu (slope 0.2), not the stem's Keras LeakyReLU (0.3).
    """

    def __init__(self, in_features: int, hidden: tuple, out_shape: tuple):
        super().__init__()
        channels, height, width = out_shape
        if height != width:
            raise ValueError(f"the conv decoder needs square images, got {height}x{width}")
        side = height + 2  # before the last 3x3 'valid' conv
        for _ in hidden:
            if side % 2:
                raise ValueError(f"the conv decoder with {len(hidden)} upsampling stages cannot "
                                 f"produce {height}x{width} images")
            side = (side + 2) // 2
        self.seed = side
        self.dense = nn.Linear(in_features, side * side)
        stages, width_in = [], 1
        for h in hidden:
            stages += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       nn.Conv2d(width_in, h, 3), nn.LeakyReLU(0.2, inplace=True)]
            width_in = h
        self.convs = nn.Sequential(*stages, nn.Conv2d(width_in, channels, 3), nn.Sigmoid())
        # Keras defaults of the authors' generator: glorot_uniform kernels, zero biases.
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, masked: torch.Tensor) -> torch.Tensor:
        return self.convs(self.dense(masked).view(-1, 1, self.seed, self.seed))


class ClassEmbeddingDecoder(nn.Module):
    """Masked capsules (B, n_classes * D) -> image: ``inner`` decodes [v, e_k] (B, 2D), v the one
    capsule the mask kept (the sum over classes: the others are zero) and e_k a learned
    embedding of its class k. The decoder's first layer then has 2D inputs instead of
    n_classes * D (32 instead of 16,000 at 1,000 classes), and reads the same masked input
    as the paper's decoder, so every caller of a decoder works unchanged. A mask that keeps
    several capsules (the semi-supervised unlabeled_recon_mask=none) has no single class: refused
    by the tasks that would pass one."""

    def __init__(self, num_classes: int, caps_dim: int, inner: nn.Module):
        super().__init__()
        self.num_classes, self.caps_dim = num_classes, caps_dim
        self.embedding = nn.Embedding(num_classes, caps_dim)
        nn.init.normal_(self.embedding.weight, std=0.1)  # about a trained capsule's entries
        self.inner = inner

    def forward(self, masked: torch.Tensor) -> torch.Tensor:
        capsules = masked.view(-1, self.num_classes, self.caps_dim)
        with torch.no_grad():
            kept = capsules.abs().sum(dim=-1).argmax(dim=1)
        vector = capsules.sum(dim=1)
        return self.inner(torch.cat([vector, self.embedding(kept).to(vector.dtype)], dim=1))


class EfficientCapsNet(nn.Module):
    """Efficient-CapsNet; see the module docstring for the layer stack."""

    has_capsules = True

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
        decoder_cls = {"fc": FCDecoder, "conv": ConvDecoder}.get(c.decoder)
        self.decoder = None
        if decoder_cls:
            embedded = c.decoder_conditioning == "embedding"
            self.decoder = decoder_cls((2 if embedded else c.num_classes) * c.caps_dim,
                                       c.decoder_hidden, (c.in_channels, *c.image_shape()))
            if embedded:
                self.decoder = ClassEmbeddingDecoder(c.num_classes, c.caps_dim, self.decoder)

    def encode(self, x: torch.Tensor, return_routing: bool = False):
        """x (B, C, H, W) float -> digit capsules (B, n_classes, D) [, c, A]."""
        return self.digit_caps(self.primary(self.stem(x)), return_routing=return_routing)

    def reconstruct(self, capsules: torch.Tensor, labels: Optional[torch.Tensor] = None):
        """Decode the capsule of ``labels`` (B,) or of each of ``labels`` (B, K) (then
        (B, K, C, H, W)), or of the longest capsule when None."""
        if self.decoder is None:
            return None
        return decode_masked(self.decoder, capsules, labels)

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None,
                return_routing: bool = False) -> CapsNetOutput:
        """x (B, C, H, W) in [0, 1]; labels (B,) mask the decoder input by the true class
        (pass them in training; (B, K) gives K reconstructions, MultiMNIST), otherwise the
        longest capsule is decoded."""
        if return_routing:
            capsules, routing, agreement = self.encode(x, return_routing=True)
        else:
            capsules, routing, agreement = self.encode(x), None, None
        lengths = capsule_lengths(capsules)
        return CapsNetOutput(capsules, lengths, self.reconstruct(capsules, labels), routing,
                             agreement)


def count_parameters(module: nn.Module, include_decoder: bool = True) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers and do not count)."""
    return sum(p.numel() for name, p in module.named_parameters()
               if p.requires_grad and (include_decoder or not name.startswith("decoder.")))


def mnist_config() -> EfficientCapsNetConfig:
    return EfficientCapsNetConfig()


def multimnist_config() -> EfficientCapsNetConfig:
    return EfficientCapsNetConfig(image_size=36, stem=((32, 5, 1), (64, 3, 1), (64, 3, 2), (128, 3, 2)),
                                  primary_kernel=5, primary_stride=2)


def affnist_config() -> EfficientCapsNetConfig:
    """40x40 inputs (the affNIST protocol), adapted from the MNIST preset by changing only the
    primary kernel: the same four convs take 40 -> 36 -> 34 -> 32 -> 15, so a 15x15 depthwise
    kernel (MNIST: 9x9 on its 9x9 map) again sees the whole map and yields 128 values = 16
    capsules x 8 dims. Everything after the primary capsules is the MNIST preset's; the decoder
    outputs 40x40. The depthwise layer grows from 10,496 to 28,928 parameters."""
    return EfficientCapsNetConfig(image_size=40, primary_kernel=15)


def tiny_config() -> EfficientCapsNetConfig:
    """A small 28x28 variant for tests (same structure, far fewer channels)."""
    return EfficientCapsNetConfig(stem=((8, 5, 1), (16, 3, 1), (16, 3, 1), (32, 3, 2)),
                                  decoder_hidden=(32, 64))


def smallnorb_config() -> EfficientCapsNetConfig:
    """The authors' smallNORB model: 2x48x48 stereo crops, 5 classes, conv decoder."""
    return EfficientCapsNetConfig(image_size=48, in_channels=2, num_classes=5,
                                  stem=((32, 7, 2), (64, 3, 1), (64, 3, 1), (128, 3, 2)),
                                  activation="leaky_relu", norm="instance", primary_kernel=8,
                                  decoder="conv", decoder_hidden=(64, 128, 128))


def smallnorb_tiny_config() -> EfficientCapsNetConfig:
    """smallNORB's structure with few channels, for tests."""
    return dataclasses.replace(smallnorb_config(), stem=((8, 7, 2), (16, 3, 1), (16, 3, 1), (32, 3, 2)),
                               decoder_hidden=(8, 8, 8))


def cifar10_config() -> EfficientCapsNetConfig:
    """Our choice for 3x32x32 CIFAR-10 (the authors gave none): the MNIST stem widened for
    colour (feature map 128x11x11 -> depthwise 11x11 -> 16 capsules x 8), BatchNorm and ReLU
    as for MNIST, and smallNORB's upsampling conv decoder (3x32x32 output)."""
    return EfficientCapsNetConfig(image_size=32, in_channels=3, primary_kernel=11,
                                  decoder="conv", decoder_hidden=(64, 128, 128))


def numbers_config(digits: int) -> EfficientCapsNetConfig:
    """MNIST numbers of ``digits`` digits side by side: 1x28x(28 * digits), 10**digits classes.
    The MNIST preset with only what the input forces changed: the same four convs take 28x56 to a
    9x23 map (28x84: 9x37), the depthwise kernel covers that whole map (primary_kernel=0) and
    again yields 16 capsules of 8 dimensions; the FC decoder outputs the composed image. Full
    class-capsule weights; ``caps_rank=R`` factorises them (docs: models)."""
    return EfficientCapsNetConfig(image_width=28 * digits, num_classes=10 ** digits,
                                  primary_kernel=0)


register_model("efficient_capsnet_mnist", EfficientCapsNet, mnist_config,
               "Efficient-CapsNet, MNIST preset (28x28x1, 10 classes)")
register_model("efficient_capsnet_multimnist", EfficientCapsNet, multimnist_config,
               "Efficient-CapsNet, MultiMNIST preset (36x36x1, stride-2 stem, depthwise 5x5/2)")
register_model("efficient_capsnet_affnist", EfficientCapsNet, affnist_config,
               "Efficient-CapsNet, 40x40 preset for the affNIST protocol (MNIST stem, depthwise 15x15)")
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
               "Efficient-CapsNet, 2-digit MNIST numbers (1x28x56, 100 classes; depthwise 9x23)")
register_model("efficient_capsnet_numbers3", EfficientCapsNet, lambda: numbers_config(3),
               "Efficient-CapsNet, 3-digit MNIST numbers (1x28x84, 1,000 classes; depthwise 9x37)")
