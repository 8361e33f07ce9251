"""What every model family shares: the output type, the decoders, the capsule-classifier base.

    CapsNetOutput          what every model's forward returns (the CNN included)
    FCDecoder              masked capsules -> image, fully connected (the paper's MNIST decoder)
    ConvDecoder            masked capsules -> image, upsampling convs (the authors' smallNORB one)
    ClassEmbeddingDecoder  wraps either: reads one capsule + a class embedding (many classes)
    build_decoder          a config's decoder fields -> one of the above, or None
    CapsuleClassifier      encode / reconstruct / forward of a capsule network, once; a family
                           supplies its layers and ``primary_capsules(x)``
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn as nn

from ..capsules import capsule_lengths, decode_masked, keras_he_normal_


class CapsNetOutput(NamedTuple):
    """What a model's forward returns.

    capsules (B, n_classes, D); lengths (B, n_classes): the class scores every caller reads
    (accuracy, eval, predict, ensembles) -- the capsule lengths in [0, 1) of a capsule network,
    the probabilities (softmax of ``logits``) or sigmoid scores of the CNN; reconstruction
    (B, C, H, W) or None (no decoder); routing: coupling coefficients c (B, n_out, n_in), summing
    to 1 over n_out, and agreement: the routing logits A (B, n_out, n_in), both only when asked
    for; logits (B, n_classes): the unnormalised class scores of a model that has them (the CNN,
    whose loss is computed on them), else None.
    """
    capsules: Optional[torch.Tensor]
    lengths: torch.Tensor
    reconstruction: Optional[torch.Tensor] = None
    routing: Optional[torch.Tensor] = None
    agreement: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None


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


def build_decoder(kind: str, num_classes: int, caps_dim: int, hidden: tuple, out_shape: tuple,
                  conditioning: str = "masked") -> Optional[nn.Module]:
    """The decoder of ``kind`` (fc | conv | none -> None) for ``num_classes`` capsules of
    ``caps_dim`` dimensions, producing images of ``out_shape`` (C, H, W); ``conditioning``
    "embedding" wraps it in a ClassEmbeddingDecoder (its first layer then reads 2 * caps_dim)."""
    decoder_cls = {"fc": FCDecoder, "conv": ConvDecoder}.get(kind)
    if decoder_cls is None:
        return None
    embedded = conditioning == "embedding"
    decoder = decoder_cls((2 if embedded else num_classes) * caps_dim, hidden, out_shape)
    return ClassEmbeddingDecoder(num_classes, caps_dim, decoder) if embedded else decoder


class CapsuleClassifier(nn.Module):
    """A capsule network: primary capsules -> class capsules (``self.digit_caps``, a routing
    layer called as ``digit_caps(u, return_routing)``) -> lengths as class scores, and
    ``self.decoder`` (or None) on the masked class capsules. A family supplies its layers and
    ``primary_capsules(x)``; ``class_lengths`` may be overridden."""

    has_capsules = True
    decoder: Optional[nn.Module]

    def primary_capsules(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) float -> primary capsules (B, n_primary, d_primary)."""
        raise NotImplementedError

    def class_lengths(self, capsules: torch.Tensor) -> torch.Tensor:
        """Class capsules (B, n_classes, D) -> class scores (B, n_classes)."""
        return capsule_lengths(capsules)

    def encode(self, x: torch.Tensor, return_routing: bool = False):
        """x (B, C, H, W) float -> class capsules (B, n_classes, D) [, c, A]."""
        return self.digit_caps(self.primary_capsules(x), return_routing=return_routing)

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
        longest capsule is decoded. ``return_routing`` adds the routing layer's final coupling
        coefficients and logits, (B, n_classes, n_primary)."""
        if return_routing:
            capsules, routing, agreement = self.encode(x, return_routing=True)
        else:
            capsules, routing, agreement = self.encode(x), None, None
        return CapsNetOutput(capsules, self.class_lengths(capsules),
                             self.reconstruct(capsules, labels), routing, agreement)
