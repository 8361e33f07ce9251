"""Capsule building blocks: squash, primary capsules, routing, masking and the losses.

Shapes: B = batch, N = number of capsules, D = capsule dimension. Capsules are (B, N, D).
Everything follows the paper and the authors' TensorFlow code (the docs' page "The paper and
the authors' code"); where the two differ the code is followed and the comment says so.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-20  # the authors' epsilon; tiny on purpose so that |squash(s)| -> 1 - exp(-|s|)


def fp32(x: torch.Tensor):
    """(x as float32, a context with autocast off): the capsule math (squash, routing) stays in
    fp32 under mixed precision; it is a tiny share of the FLOPs, and bf16's 3 significant digits
    would blur capsule lengths near the margins 0.9 / 0.1."""
    if torch.is_autocast_enabled(x.device.type):
        return x.float(), torch.autocast(x.device.type, enabled=False)
    return x, contextlib.nullcontext()


def squash(s: torch.Tensor, dim: int = -1, eps: float = EPS) -> torch.Tensor:
    """Efficient-CapsNet squash: (1 - 1/(exp|s| + eps)) * s / (|s| + eps).

    Keeps the direction of s and maps its length |s| to 1 - exp(-|s|) in [0, 1).
    """
    norm = torch.linalg.vector_norm(s, dim=dim, keepdim=True)
    # reciprocal() is 1 / x exactly, in one kernel (1 / x dispatches reciprocal, then * 1)
    return (1 - (torch.exp(norm) + eps).reciprocal()) * s / (norm + eps)


def squash_hinton(s: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """Original CapsNet squash (Sabour et al. 2017): |s|^2 / (1 + |s|^2) * s / |s|."""
    sq = (s * s).sum(dim=dim, keepdim=True)
    return sq / (1 + sq) * s / torch.sqrt(sq + eps)


def keras_he_normal_(weight: torch.Tensor, fan_in: int) -> torch.Tensor:
    """Keras' `he_normal`: truncated normal (+-2 std) with std = sqrt(2 / fan_in) / 0.8796.

    Keras rescales the std so the *truncated* distribution has variance 2 / fan_in.
    """
    std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
    return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)


def keras_glorot_uniform_(weight: torch.Tensor, fan_in: int, fan_out: int) -> torch.Tensor:
    """Keras' `glorot_uniform`: uniform in +-sqrt(6 / (fan_in + fan_out)), with the fans Keras
    computes (its own kernel layout; pass them explicitly)."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return nn.init.uniform_(weight, -limit, limit)


class PrimaryCaps(nn.Module):
    """Depthwise conv ('valid', no activation) reshaped to capsules and squashed.

    Input (B, C, H, W) -> output (B, num_caps, caps_dim). The reshape takes channels last, as
    Keras' Reshape does on an NHWC tensor, so imported Keras weights give the same capsules.
    """

    full_map_product: bool = True
    """When the kernel covers the whole map (MNIST: 9x9 on 9x9) and the input is NCHW, compute
    the conv as an elementwise product and sum (one batched matmul): the same numbers, 1.6-3x
    faster than oneDNN's depthwise conv there (BENCHMARKS.md). On channels_last input the conv
    is as fast, so it is used. Set False for the plain conv always."""

    def __init__(self, in_channels: int, kernel_size, num_caps: int, caps_dim: int,
                 stride: int = 1, init: str = "glorot_uniform"):
        """``kernel_size``: an int (square) or (kh, kw)."""
        super().__init__()
        self.num_caps, self.caps_dim = num_caps, caps_dim
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size, stride=stride,
                              groups=in_channels)
        rf = self.conv.kernel_size[0] * self.conv.kernel_size[1]
        if init == "glorot_uniform":
            # Follows the authors' code: their depthwise conv names no initialiser, so Keras'
            # default applies, with Keras' fans of a (k, k, 1, C) kernel (std 0.014 on MNIST).
            keras_glorot_uniform_(self.conv.weight, fan_in=rf, fan_out=rf * in_channels)
        elif init == "he_normal":  # effcn before 2026-12: first-step capsules ~3x longer
            keras_he_normal_(self.conv.weight, fan_in=rf)
        else:
            raise ValueError(f"primary capsule init must be glorot_uniform or he_normal, got "
                             f"{init!r}")
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, precision = fp32(x)
        with precision:
            return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.full_map_product and tuple(x.shape[2:]) == self.conv.kernel_size
                and x.is_contiguous()):
            # One output pixel per channel: sum_hw x[b,c,h,w] * k[c,h,w] + bias[c]; the NHWC
            # order of a 1x1 map is just the channel order.
            w = self.conv.weight.flatten(1)                                   # (C, K*K)
            x = torch.einsum("bck,ck->bc", x.flatten(2), w.to(x.dtype)) + self.conv.bias.to(x.dtype)
        else:
            x = self.conv(x).permute(0, 2, 3, 1)  # NHWC, as in Keras
        return squash(x.reshape(x.shape[0], self.num_caps, self.caps_dim))


class SelfAttentionRouting(nn.Module):
    """Fully connected capsule layer with self-attention routing (Mazzia et al. 2021).

    u_hat[j,i] = u_i W[j,i];  A[j,i] = sum_k <u_hat[j,i], u_hat[j,k]> / sqrt(d_out);
    c = softmax over j (output capsules) of A;  v_j = squash(sum_i (c[j,i] + b[j,i]) u_hat[j,i]).

    Input (B, n_in, d_in) -> output (B, n_out, d_out). With ``uniform=True`` the coupling is the
    constant 1/n_out instead (an ablation: does routing do anything?). With ``rank=r > 0`` the
    weights are factorised (see __init__) to keep the layer small for many classes.
    """

    def __init__(self, n_in: int, d_in: int, n_out: int, d_out: int, uniform: bool = False,
                 rank: int = 0):
        super().__init__()
        self.n_in, self.d_in, self.n_out, self.d_out = n_in, d_in, n_out, d_out
        self.uniform, self.rank = uniform, rank
        self.b = nn.Parameter(torch.zeros(n_out, n_in))
        if rank:
            # Factorised W[j,i] = W_in[i] @ W_out[j]: n_in*d_in*r + n_out*r*d_out parameters
            # instead of n_out*n_in*d_in*d_out, so the layer grows by r*d_out per extra class.
            self.W_in = nn.Parameter(torch.empty(n_in, d_in, rank))
            self.W_out = nn.Parameter(torch.empty(n_out, rank, d_out))
            # Scaled so that W_in[i] @ W_out[j] starts with the full W's variance
            # (rank * 1/rank * var_full): otherwise u_hat is ~10x larger, every class capsule
            # squashes to length ~1 and the margin loss has no gradient to learn from.
            keras_he_normal_(self.W_in, fan_in=2 * rank)
            keras_he_normal_(self.W_out, fan_in=n_out * n_in * d_in)
        else:
            self.W = nn.Parameter(torch.empty(n_out, n_in, d_in, d_out))
            # Keras computes fan_in of a 4-D weight as prod(shape[:-1]) = n_out * n_in * d_in.
            keras_he_normal_(self.W, fan_in=n_out * n_in * d_in)

    def predictions(self, u: torch.Tensor) -> torch.Tensor:
        """u (B, n_in, d_in) -> u_hat (B, n_out, n_in, d_out)."""
        if self.rank:
            return torch.einsum("bir,jre->bjie", torch.einsum("bid,idr->bir", u, self.W_in),
                                self.W_out)
        return torch.einsum("bid,jide->bjie", u, self.W)

    def coupling(self, u_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u_hat (B, n_out, n_in, d_out) -> (c, A), both (B, n_out, n_in); c sums to 1 over n_out."""
        # sum_k <u_hat[j,i], u_hat[j,k]> = <u_hat[j,i], sum_k u_hat[j,k]>: O(n_in), not O(n_in^2).
        agreement = (u_hat * u_hat.sum(dim=2, keepdim=True)).sum(-1) / math.sqrt(self.d_out)
        if self.uniform:
            return torch.full_like(agreement, 1.0 / self.n_out), agreement
        return torch.softmax(agreement, dim=1), agreement

    def forward(self, u: torch.Tensor, return_routing: bool = False):
        u, precision = fp32(u)
        with precision:
            return self._forward(u, return_routing)

    def _forward(self, u: torch.Tensor, return_routing: bool):
        u_hat = self.predictions(u)
        c, agreement = self.coupling(u_hat)
        v = squash(((c + self.b).unsqueeze(-1) * u_hat).sum(dim=2))
        if return_routing:
            return v, c, agreement
        return v


class DynamicRouting(nn.Module):
    """Fully connected capsule layer with routing-by-agreement (Sabour, Frosst, Hinton 2017).

    u_hat[j,i] = u_i W[j,i];  logits b[j,i] start at 0; then ``iterations`` times:
    c = softmax over j (output capsules) of b;  v_j = squash_hinton(sum_i c[j,i] u_hat[j,i]);
    b[j,i] += <u_hat[j,i], v_j>  (this update is skipped after the last iteration: unused).

    ``iterations`` counts as in the paper's Procedure 1 (r = 3 there): r iterations make r - 1
    agreement updates, so ``iterations=1`` keeps the uniform coupling c = 1/n_out. Input
    (B, n_in, d_in) -> output (B, n_out, d_out); with return_routing also the final coupling c
    and logits b, both (B, n_out, n_in), as SelfAttentionRouting returns (c, A).
    """

    def __init__(self, n_in: int, d_in: int, n_out: int, d_out: int, iterations: int = 3):
        super().__init__()
        if iterations < 1:
            raise ValueError(f"routing iterations must be at least 1 (1 = uniform coupling), "
                             f"got {iterations}")
        self.n_in, self.d_in, self.n_out, self.d_out = n_in, d_in, n_out, d_out
        self.iterations = iterations
        self.W = nn.Parameter(torch.empty(n_out, n_in, d_in, d_out))
        nn.init.normal_(self.W, std=0.01)  # a small Gaussian, as common CapsNet ports use

    def predictions(self, u: torch.Tensor) -> torch.Tensor:
        """u (B, n_in, d_in) -> u_hat (B, n_out, n_in, d_out)."""
        return torch.einsum("bid,jide->bjie", u, self.W)

    def route(self, u_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """u_hat (B, n_out, n_in, d_out) -> (v (B, n_out, d_out), c, logits (B, n_out, n_in))."""
        logits = u_hat.new_zeros(u_hat.shape[:3])
        for it in range(self.iterations):
            c = torch.softmax(logits, dim=1)
            v = squash_hinton(torch.einsum("bji,bjie->bje", c, u_hat))
            if it < self.iterations - 1:
                logits = logits + torch.einsum("bjie,bje->bji", u_hat, v)
        return v, c, logits

    def forward(self, u: torch.Tensor, return_routing: bool = False):
        v, c, logits = self.route(self.predictions(u))
        if return_routing:
            return v, c, logits
        return v


def margin_loss(lengths: torch.Tensor, targets: torch.Tensor, m_plus: float = 0.9,
                m_minus: float = 0.1, lam: float = 0.5) -> torch.Tensor:
    """Margin loss, summed over classes and averaged over the batch.

    lengths (B, n_classes) capsule lengths; targets (B, n_classes) multi-hot (1 for every true
    class; MultiMNIST has two) or (B,) integer labels.
    """
    if targets.dim() == 1:
        targets = F.one_hot(targets, lengths.shape[1])
    targets = targets.to(lengths.dtype)
    present = targets * F.relu(m_plus - lengths) ** 2
    absent = lam * (1 - targets) * F.relu(lengths - m_minus) ** 2
    return (present + absent).sum(dim=1).mean()


PREDICTED = -1     # a label of mask_capsules: keep the longest capsule (the prediction)
ALL_CAPSULES = -2  # a label of mask_capsules: keep every capsule (no masking)


def mask_capsules(capsules: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Zero every capsule but one and flatten: (B, N, D) -> (B, N * D).

    The kept capsule is the true label when ``labels`` (B,) is given (training), otherwise the
    longest capsule (inference). Earlier ports masked by the prediction during training: wrong.
    Per example, a label may also be PREDICTED (-1: the longest capsule) or ALL_CAPSULES (-2:
    nothing is zeroed), as the semi-supervised task's unlabeled images are decoded.
    """
    if labels is None:
        labels = torch.linalg.vector_norm(capsules, dim=-1).argmax(dim=1)
        mask = F.one_hot(labels, capsules.shape[1]).to(capsules.dtype)
        return (capsules * mask.unsqueeze(-1)).flatten(1)
    with torch.no_grad():  # resolved on the device (no host sync); true labels pass unchanged
        longest = torch.linalg.vector_norm(capsules, dim=-1).argmax(dim=1)
        keep = torch.where(labels == PREDICTED, longest, labels)
        classes = torch.arange(capsules.shape[1], device=capsules.device)
        mask = (keep[:, None] == classes) | (labels == ALL_CAPSULES)[:, None]  # (B, N) bool
    return (capsules * mask.unsqueeze(-1)).flatten(1)  # times 1 or 0, as a 0/1 float mask


def capsule_lengths(capsules: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Class scores |v_j|: (B, N, D) -> (B, N). Follows the authors' code: their Length layer
    is sqrt(sum v^2 + 1e-7) (Keras' epsilon under the root), which matters for the short
    capsules of an untrained network (1.3e-5 at a length of 0.004)."""
    return torch.sqrt(capsules.pow(2).sum(dim=-1) + eps)


def decode_masked(decoder, capsules: torch.Tensor, labels: torch.Tensor | None = None):
    """``decoder`` on masked capsules (B, N, D): labels None (the longest capsule) or (B,) give
    one image per example (B, C, H, W); labels (B, K) give one per label (B, K, C, H, W), e.g.
    MultiMNIST's two digits."""
    if labels is not None and labels.dim() == 2:
        return torch.stack([decoder(mask_capsules(capsules, labels[:, k]))
                            for k in range(labels.shape[1])], dim=1)
    return decoder(mask_capsules(capsules, labels))


def reconstruction_loss(reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Mean squared error over pixels and batch (Keras 'mse'); weight it by 0.392 outside."""
    return F.mse_loss(reconstruction.flatten(1), images.flatten(1).to(reconstruction.dtype))
