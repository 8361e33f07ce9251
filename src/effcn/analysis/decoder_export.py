"""A capsule decoder as a portable list of operations, for decoding outside PyTorch.

``export_decoder(model.decoder)`` describes the decoder's forward as plain operations with their
weights as numpy arrays (float32), in the order they run:

    linear       weight (out, in), bias (out,)              y = W x + b
    relu, sigmoid, leaky_relu (slope)                       elementwise
    reshape      shape (C, H, W)                            the flat vector read as C x H x W
    upsample     bilinear x2, align_corners=False           (C, H, W) -> (C, 2H, 2W)
    conv2d       weight (O, I, k, k), bias (O,)             stride 1, no padding ('valid')

The input is the masked capsules, flat (n_classes * D,); the output is flat (C * H * W,) in
C, H, W order, i.e. the decoder's image. ``run_exported`` runs such a list with numpy: the
reference the explorer's JavaScript decoder is held to. Both FC (MNIST) and the upsampling conv
decoder (smallNORB, CIFAR-10) export; any other module makes ``export_decoder`` return None.
"""

from __future__ import annotations

import numpy as np
import torch.nn as nn


def _array(t) -> np.ndarray:
    return t.detach().cpu().float().numpy().copy()


def _op(module) -> dict | None:
    """One module as an operation, or None when it has no portable form."""
    if isinstance(module, nn.Linear):
        return {"op": "linear", "weight": _array(module.weight), "bias": _array(module.bias)}
    if isinstance(module, nn.ReLU):
        return {"op": "relu"}
    if isinstance(module, nn.Sigmoid):
        return {"op": "sigmoid"}
    if isinstance(module, nn.LeakyReLU):
        return {"op": "leaky_relu", "slope": float(module.negative_slope)}
    if isinstance(module, nn.Upsample):
        if (module.mode == "bilinear" and not module.align_corners and module.size is None
                and float(module.scale_factor) == 2.0):
            return {"op": "upsample"}
        return None
    if isinstance(module, nn.Conv2d):
        if (tuple(module.stride) == (1, 1) and tuple(module.dilation) == (1, 1)
                and module.groups == 1 and module.padding in ((0, 0), "valid")
                and module.kernel_size[0] == module.kernel_size[1] and module.bias is not None):
            return {"op": "conv2d", "weight": _array(module.weight), "bias": _array(module.bias)}
        return None
    return None


def _modules(decoder) -> list | None:
    """The decoder's modules in forward order, with ("reshape", shape) where it views."""
    from ..models.common import ConvDecoder, FCDecoder
    if isinstance(decoder, FCDecoder):
        return list(decoder.net)
    if isinstance(decoder, ConvDecoder):
        return [decoder.dense, ("reshape", (1, decoder.seed, decoder.seed)), *decoder.convs]
    return None


def export_decoder(decoder) -> dict | None:
    """{'ops': [...], 'in_features': n_classes * D, 'out_shape': (C, H, W)} of an FC or conv
    decoder, or None for a decoder without a portable form (or no decoder)."""
    modules = _modules(decoder) if decoder is not None else None
    if modules is None:
        return None
    ops = []
    for m in modules:
        op = {"op": "reshape", "shape": list(m[1])} if isinstance(m, tuple) else _op(m)
        if op is None:
            return None
        ops.append(op)
    first = next(m for m in modules if isinstance(m, nn.Linear))
    out_shape = decoder.out_shape if hasattr(decoder, "out_shape") else None
    if out_shape is None:  # ConvDecoder: the last conv's channels on the square image
        last = [m for m in modules if isinstance(m, nn.Conv2d)][-1]
        side = decoder.seed
        for m in modules:
            if isinstance(m, nn.Upsample):
                side *= 2
            elif isinstance(m, nn.Conv2d):
                side -= m.kernel_size[0] - 1
        out_shape = (last.out_channels, side, side)
    return {"ops": ops, "in_features": int(first.in_features),
            "out_shape": [int(v) for v in out_shape]}


def _upsample2(x: np.ndarray) -> np.ndarray:
    """Bilinear x2 of (C, H, W), align_corners=False (PyTorch's rule)."""
    def axis(n):
        src = np.maximum((np.arange(2 * n) + 0.5) / 2 - 0.5, 0)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        return lo, hi, (src - lo).astype(x.dtype)
    (h0, h1, lh), (w0, w1, lw) = axis(x.shape[1]), axis(x.shape[2])
    rows = x[:, h0] * (1 - lh)[None, :, None] + x[:, h1] * lh[None, :, None]
    return rows[:, :, w0] * (1 - lw) + rows[:, :, w1] * lw


def _conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    k = weight.shape[-1]
    h, w = x.shape[1] - k + 1, x.shape[2] - k + 1
    patches = np.stack([x[:, i:i + h, j:j + w] for i in range(k) for j in range(k)], axis=1)
    # patches (I, k*k, h, w); weight (O, I, k, k)
    out = np.einsum("ikhw,oik->ohw", patches, weight.reshape(*weight.shape[:2], k * k))
    return out + bias[:, None, None]


def run_exported(exported: dict, masked: np.ndarray) -> np.ndarray:
    """Run an exported decoder on one masked capsule vector (n_classes * D,) -> (C * H * W,)."""
    x = np.asarray(masked, dtype=np.float64)
    for op in exported["ops"]:
        kind = op["op"]
        if kind == "linear":
            x = op["weight"].astype(np.float64) @ x.reshape(-1) + op["bias"]
        elif kind == "relu":
            x = np.maximum(x, 0)
        elif kind == "leaky_relu":
            x = np.where(x >= 0, x, x * op["slope"])
        elif kind == "sigmoid":
            x = 1 / (1 + np.exp(-x))
        elif kind == "reshape":
            x = x.reshape(op["shape"])
        elif kind == "upsample":
            x = _upsample2(x)
        elif kind == "conv2d":
            x = _conv2d(x, op["weight"].astype(np.float64), op["bias"])
        else:
            raise ValueError(f"unknown decoder operation {kind!r}")
    return x.reshape(-1)
