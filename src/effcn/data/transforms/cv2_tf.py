"""cv2's ``warpAffine`` rotation and TensorFlow's antialiased Lanczos-3 resize, reproduced.

The authors' MNIST augmentation (:mod:`effcn.data.transforms.mnist_policy`) rotates with cv2 and
squishes with ``tf.image.resize(method="lanczos3", antialias=True)``. This module repeats both
libraries' arithmetic, so effcn's batched torch version matches their outputs without needing
either library: :func:`cv2_rotate` bit for bit (fixed-point sampling positions, exact bilinear
weights, the same summation order), :func:`tf_resize_weights` to float32 rounding (TensorFlow's
float32 kernel arithmetic step by step; sums then run in another order, so outputs agree to
about 1e-7). tests/test_augment_authors.py checks both against the authors' own outputs.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch
import torch.nn.functional as F

# --- cv2's warpAffine -----------------------------------------------------------------------

_AB_BITS, _INTER_BITS = 10, 5  # cv2's warpAffine: coordinates in 1/1024, then 1/32 pixel


def cv2_rotate(images: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """``cv2.warpAffine(img, cv2.getRotationMatrix2D((W/2, H/2), angle, 1.0), (W, H))`` per
    sample, batched: bilinear, constant border 0, ``angle`` (B,) degrees counter-clockwise.

    cv2's fixed-point path (imgwarp.cpp; checked bit for bit against opencv-python 4.9 on
    MNIST digits and noise): the matrix is built and inverted (M) in float64; output pixel (x, y)
    samples the input at ``X = (round(M00 x 1024) + round((M01 y + M02) 1024) + 16) >> 5``
    (likewise Y) in units of 1/32 pixel; the four neighbours of ``(X >> 5, Y >> 5)`` are
    weighted by the exact products of ``(X & 31) / 32`` and ``(Y & 31) / 32``, taps outside the
    image reading 0. Angle 0 is the exact identity. The coordinate arithmetic runs in float64
    on the images' device (:func:`cv2_rotation_taps`).
    """
    _, _, h, w = images.shape
    return sample_taps(images, *cv2_rotation_taps(angle, h, w, images.device, images.dtype))


def cv2_rotate_whole_degrees(images: torch.Tensor, angle: torch.Tensor,
                             max_degrees: int) -> torch.Tensor:
    """:func:`cv2_rotate` for angles that are whole degrees in ``[-max_degrees, max_degrees]``
    (as the MNIST policy draws them), bit for bit, in a handful of kernels: the taps of every
    such angle are computed once (:func:`cv2_rotation_taps`, kept per size, device and dtype)
    and looked up per sample, so no float64 coordinate arithmetic runs per batch. Angles are
    truncated to whole degrees and clamped to the range (no check: it would sync the device).
    """
    _, _, h, w = images.shape
    key = ("rotate", h, w, str(images.device), images.dtype, max_degrees)
    if key not in _BANKS:
        every = torch.arange(-max_degrees, max_degrees + 1, device=images.device)
        _BANKS[key] = cv2_rotation_taps(every, h, w, images.device, images.dtype)
    index, weights = _BANKS[key]
    row = (angle.to(images.device).long() + max_degrees).clamp(0, 2 * max_degrees)
    return sample_taps(images, index.index_select(0, row), weights.index_select(0, row))


def cv2_rotation_taps(angle: torch.Tensor, h: int, w: int, device: torch.device,
                      dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """cv2's four bilinear taps of each output pixel for rotations by ``angle`` (B,) degrees:
    ``index`` (B, 4, H*W) int64 into the images zero-padded by :func:`rotation_pad` on every
    side and flattened, and their ``weights`` (B, 4, H*W) in ``dtype`` (see :func:`cv2_rotate`).
    """
    rad = angle.to(device=device, dtype=torch.float64) * (np.pi / 180)
    alpha, beta = torch.cos(rad), torch.sin(rad)
    cx, cy = w / 2, h / 2
    m02 = (1 - alpha) * cx - beta * cy
    m12 = beta * cx + (1 - alpha) * cy
    det = alpha * alpha - beta * (-beta)  # forward matrix [[a, b, m02], [-b, a, m12]]
    det = torch.where(det != 0, 1.0 / det, torch.zeros_like(det))
    i00, i11, i01, i10 = alpha * det, alpha * det, beta * -det, (-beta) * -det  # its inverse
    i02 = -i00 * m02 - i01 * m12
    i12 = -i10 * m02 - i11 * m12
    scale = float(1 << _AB_BITS)
    xs = torch.arange(w, device=device, dtype=torch.float64)[None, :]
    ys = torch.arange(h, device=device, dtype=torch.float64)[None, :]
    round_delta = 1 << (_AB_BITS - _INTER_BITS - 1)

    def fixed(per_x: torch.Tensor, per_y: torch.Tensor) -> torch.Tensor:  # (B, H, W) in 1/32 px
        return (per_y.long()[:, :, None] + per_x.long()[:, None, :]) >> (_AB_BITS - _INTER_BITS)

    big_x = fixed(torch.round(i00[:, None] * xs * scale),
                  torch.round((i01[:, None] * ys + i02[:, None]) * scale) + round_delta)
    big_y = fixed(torch.round(i10[:, None] * xs * scale),
                  torch.round((i11[:, None] * ys + i12[:, None]) * scale) + round_delta)
    tab = 1 << _INTER_BITS
    pad = rotation_pad(h, w)
    hp, wp = h + 2 * pad, w + 2 * pad
    x0 = ((big_x >> _INTER_BITS) + pad).clamp(0, wp - 2)
    y0 = ((big_y >> _INTER_BITS) + pad).clamp(0, hp - 2)
    fx = (big_x & (tab - 1)).to(dtype) / tab
    fy = (big_y & (tab - 1)).to(dtype) / tab
    corner = (y0 * wp + x0).reshape(-1, 1, h * w)  # the top-left tap
    taps = torch.arange(4, device=device)  # 0, 1, wp, wp + 1 without a host-to-device copy
    index = corner + ((taps % 2) + (taps // 2) * wp)[None, :, None]  # (a CUDA graph forbids one)
    weights = torch.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], dim=1)
    return index, weights.reshape(-1, 4, h * w)


def rotation_pad(h: int, w: int) -> int:
    """Zero padding (pixels per side) beyond any rotation's reach (half the diagonal beyond the
    shorter half side), so every tap reads the padded image and cv2's border-0 taps need no
    masks."""
    return int(np.ceil(np.hypot(h, w) / 2 - min(h, w) / 2)) + 2


def sample_taps(images: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Sum the four weighted taps (:func:`cv2_rotation_taps`) of every output pixel of (B, C, H,
    W) ``images`` in cv2's order, ``((v0 w0 + v1 w1) + v2 w2) + v3 w3``: one gather for all."""
    b, c, h, w = images.shape
    pad = rotation_pad(h, w)
    flat = F.pad(images, (pad, pad, pad, pad)).reshape(b, c, -1)
    taps = flat.gather(2, index.reshape(b, 1, 4 * h * w).expand(b, c, -1)).reshape(b, c, 4, h * w)
    taps = taps * weights[:, None]
    out = taps[:, :, 0] + taps[:, :, 1]
    out = out + taps[:, :, 2]
    return (out + taps[:, :, 3]).reshape(b, c, h, w)


# --- TensorFlow's antialiased Lanczos-3 resize ------------------------------------------------

_F32 = np.float32
_TF_PI = _F32(3.14159265359)  # sampling_kernels.h: constexpr float kPI
_LANCZOS_RADIUS = _F32(3)


def _tf_lanczos3(x: np.float32) -> np.float32:
    """TensorFlow's LanczosKernelFunc(3) in float32: sinc(x) sinc(x/3), 0 beyond |x| > 3."""
    x = _F32(abs(x))
    if x > _LANCZOS_RADIUS:
        return _F32(0)
    if float(x) <= 1e-3:  # the sin(x)/x limit
        return _F32(1)
    r = _LANCZOS_RADIUS
    return r * np.sin(_TF_PI * x) * np.sin(_TF_PI * x / r) / (_TF_PI * _TF_PI * x * x)


def tf_resize_weights(out_size: int, in_size: int) -> np.ndarray:
    """The (out_size, in_size) float32 weights of ``tf.image.resize(method="lanczos3",
    antialias=True)`` along one axis: output pixel ``x`` is ``sum_i W[x, i] * input[i]``.

    TensorFlow's ``ComputeSpansCore`` (scale_and_translate_op.cc) with translation 0, in its
    float32 arithmetic: ``scale = out / in``; ``kernel_scale = max(1 / scale, 1)``; output ``x``
    samples at ``s = (x + 0.5) / scale``; its span is the input pixels ``i`` from
    ``ceil(s - 3 * kernel_scale - 0.5)`` to ``floor(s + 3 * kernel_scale - 0.5)``, both clamped
    to ``[0, in)`` (so near an edge only the in-range pixels get weights); the weights
    ``lanczos3(|i + 0.5 - s| / kernel_scale)`` are divided by their sum (when that is not ~0).
    """
    scale = _F32(out_size) / _F32(in_size)
    inv_scale = _F32(1.0 / float(scale))
    kernel_scale = max(inv_scale, _F32(1))
    reach = _LANCZOS_RADIUS * kernel_scale
    one_over_kernel_scale = _F32(1) / kernel_scale
    weights = np.zeros((out_size, in_size), np.float32)
    for x in range(out_size):
        sample = (_F32(x) + _F32(0.5)) * inv_scale
        if sample < 0 or sample > in_size:  # outside the source: an empty span
            continue
        start = int(np.ceil(sample - reach - _F32(0.5)))
        end = int(np.floor(sample + reach - _F32(0.5)))
        start, end = min(max(start, 0), in_size - 1), min(max(end, 0), in_size - 1) + 1
        row = [_tf_lanczos3((_F32(i) + _F32(0.5) - sample) * one_over_kernel_scale)
               for i in range(start, end)]
        total = _F32(0)
        for value in row:
            total = _F32(total + value)
        if abs(total) >= 1000 * np.finfo(np.float32).tiny:
            weights[x, start:end] = np.array(row, np.float32) * (_F32(1) / total)
    return weights


_BANKS: Dict[tuple, Tuple[torch.Tensor, torch.Tensor]] = {}  # lanczos_bank / rotation taps, per key


def lanczos_bank(height: int, width: int, device: torch.device, dtype: torch.dtype):
    """``(rows (H, H), bank (W, W, W))``: TensorFlow's row weights for the unchanged height, and
    for each shrink ``k`` in [1, W) the (W - k, W) column weights in ``bank[k, :W - k]`` (rest 0).

    Built once per (size, device, dtype) on the host and kept on the device.
    """
    key = (height, width, str(device), dtype)
    if key not in _BANKS:
        bank = np.zeros((width, width, width), np.float32)
        bank[0] = np.eye(width, dtype=np.float32)
        for k in range(1, width):
            bank[k, : width - k] = tf_resize_weights(width - k, width)
        rows = tf_resize_weights(height, height)
        _BANKS[key] = (torch.from_numpy(rows).to(device=device, dtype=dtype),
                       torch.from_numpy(bank).to(device=device, dtype=dtype))
    return _BANKS[key]
