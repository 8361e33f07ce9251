"""Efficient-CapsNet MNIST training augmentation, batched on any device.

The paper's MNIST model, per sample and in this order (training only):

1. rotate, with probability 0.5, by ``int(clip(N(0, .33), -.9999, .9999) * 30)`` degrees;
2. shift each axis towards a random side by ``floor(min(|N(0, .33)|, .9999) * margin)`` px,
   ``margin`` being the empty rows/columns between the digit's bounding box and that border;
3. squish horizontally: the width shrinks by ``w = floor(min(|N|, .9999) * 7 + 1)`` px and the
   narrower image is placed at column ``w // 2 + floor(min(|N|, .9999) * 2)``;
4. erase a 4x4 patch whose top-left corner is uniform in ``[4, 22]`` on both axes.

Every step works on a whole batch ``(B, C, H, W)`` at once, on the images' device, with no
Python loop over samples and no host-device sync. Drawing the random numbers
(:func:`sample_params`) is separate from using them (:func:`apply_params` and the per-step
functions :func:`rotate`, :func:`shift_amounts`, :func:`translate`, :func:`squish`,
:func:`erase`), so the distributions can be tested on their own.

Where this differs from the authors' TensorFlow code, on purpose:

- rotation is about the image centre (pixel-centre coordinates ``((W-1)/2, (H-1)/2)``); cv2 used
  ``(14, 14)``, half a pixel off for 28x28;
- squish resamples with exact area (box) weights instead of antialiased Lanczos-3: no ringing
  outside [0, 1], and the image's mass is scaled by exactly ``(W - w) / W``;
- shifts use ``floor(frac * margin)`` on both sides as the paper describes (the authors' code used
  ``ceil(frac * margin)`` towards the top/left and ``floor(frac * (margin + 1))`` towards the
  bottom/right; all keep the digit whole).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from effcn.errors import ConfigError

PARTS: Tuple[str, ...] = ("rotate", "shift", "squish", "erase")
"""The augmentation steps, in the fixed order they are applied."""

Params = Dict[str, torch.Tensor]


@dataclass(frozen=True)
class AugmentConfig:
    """The numbers of the augmentation; defaults are the paper's (28x28 MNIST).

    ``squish_max`` and ``erase_range`` default to ``None``, meaning "scale with the image":
    ``squish_max = width / 4`` (7 for 28, 10 for 40, as in the original code) and
    ``erase_range = (4, size - 6)`` per axis ((4, 22) for 28, (4, 34) for 40), i.e. the patch
    never touches the outer 4 rows/columns on the top/left and 2 on the bottom/right.
    """

    sigma: float = 0.33
    """Standard deviation of every normal draw (unitless fraction)."""
    clip: float = 0.9999
    """Upper bound of ``|N|`` fractions; keeps angles below the max and shifts within margins."""
    max_rotation: float = 30.0
    """Degrees; angles are ``trunc(clip(N) * max_rotation)``, so at most 29 for 30."""
    rotate_prob: float = 0.5
    """Probability that a sample is rotated at all."""
    squish_max: Optional[float] = None
    """Pixels; the width shrinks by ``floor(frac * squish_max + 1)``. None: ``width / 4``."""
    squish_extra_offset: int = 2
    """Multiplier of the extra column offset ``floor(frac * squish_extra_offset)`` (0 or 1)."""
    erase_size: int = 4
    """Side of the erased square patch, pixels."""
    erase_range: Optional[Tuple[int, int]] = None
    """Inclusive range of the patch's top-left corner on each axis. None: ``(4, size - 6)``."""

    def __post_init__(self) -> None:
        checks = [
            (self.sigma > 0, "sigma must be positive"),
            (0 < self.clip < 1, "clip must be in (0, 1)"),
            (self.max_rotation >= 0, "max_rotation must be >= 0"),
            (0 <= self.rotate_prob <= 1, "rotate_prob must be in [0, 1]"),
            (self.squish_max is None or self.squish_max >= 0, "squish_max must be >= 0"),
            (self.squish_extra_offset >= 0, "squish_extra_offset must be >= 0"),
            (self.erase_size >= 0, "erase_size must be >= 0"),
            (
                self.erase_range is None
                or (len(self.erase_range) == 2 and 0 <= self.erase_range[0] <= self.erase_range[1]),
                "erase_range must be (lo, hi) with 0 <= lo <= hi",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"Invalid augmentation config: {message}.")

    def squish_max_for(self, width: int) -> float:
        """Largest width reduction in pixels for images ``width`` wide."""
        value = width / 4 if self.squish_max is None else float(self.squish_max)
        if value + 1 >= width:
            raise ConfigError(
                f"Invalid augmentation config: squish_max {value:g} is too large for width {width}."
            )
        return value

    def erase_range_for(self, size: int) -> Tuple[int, int]:
        """Inclusive range of the erase corner along an axis of ``size`` pixels."""
        lo, hi = (4, size - 6) if self.erase_range is None else self.erase_range
        if not 0 <= lo <= hi or hi + self.erase_size > size:
            raise ConfigError(
                f"Invalid augmentation config: erase corners [{lo}, {hi}] with a "
                f"{self.erase_size}-pixel patch do not fit an axis of {size} pixels."
            )
        return lo, hi


def sample_params(
    batch_size: int,
    height: int,
    width: int,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device | str] = None,
    cfg: Optional[AugmentConfig] = None,
) -> Params:
    """Draw the random numbers for one batch; all are drawn whatever parts are used.

    ``generator`` must live on ``device`` (None: the global RNG). Returns tensors on ``device``:

    - ``rotate`` (B,) bool: whether the sample is rotated;
    - ``angle`` (B,) float32: integer-valued degrees, counter-clockwise as displayed;
    - ``shift_sign`` (B, 2) int64 in {-1, +1}: direction per axis (y, x), +1 = down / right;
    - ``shift_frac`` (B, 2) float32 in [0, clip]: fraction of the margin to move;
    - ``squish_w`` (B,) int64 in [1, floor(squish_max + 1)]: columns removed by the squish;
    - ``squish_offset`` (B,) int64: first column of the squished image, ``w // 2 + {0, 1}``;
    - ``erase_yx`` (B, 2) int64: top-left corner (row, column) of the erased patch.
    """
    cfg = cfg or AugmentConfig()
    shape = (batch_size,)

    def normal(*size: int) -> torch.Tensor:
        return torch.randn(size, generator=generator, device=device) * cfg.sigma

    def uniform(*size: int) -> torch.Tensor:
        return torch.rand(size, generator=generator, device=device)

    def fraction(*size: int) -> torch.Tensor:  # min(|N(0, sigma)|, clip)
        return normal(*size).abs().clamp(max=cfg.clip)

    angle = torch.trunc(normal(*shape).clamp(-cfg.clip, cfg.clip) * cfg.max_rotation)
    rotate = uniform(*shape) < cfg.rotate_prob
    shift_sign = (uniform(batch_size, 2) < 0.5).long() * 2 - 1
    shift_frac = fraction(batch_size, 2)
    squish_w = torch.floor(fraction(*shape) * cfg.squish_max_for(width) + 1).long()
    squish_offset = squish_w // 2 + torch.floor(fraction(*shape) * cfg.squish_extra_offset).long()
    (y_lo, y_hi), (x_lo, x_hi) = cfg.erase_range_for(height), cfg.erase_range_for(width)
    erase_y = torch.randint(y_lo, y_hi + 1, shape, generator=generator, device=device)
    erase_x = torch.randint(x_lo, x_hi + 1, shape, generator=generator, device=device)
    return {
        "rotate": rotate,
        "angle": angle,
        "shift_sign": shift_sign,
        "shift_frac": shift_frac,
        "squish_w": squish_w,
        "squish_offset": squish_offset,
        "erase_yx": torch.stack([erase_y, erase_x], dim=1),
    }


def rotate(images: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate (B, C, H, W) images by ``angle`` (B,) degrees, counter-clockwise as displayed.

    About the image centre, bilinear, zeros outside. Angle 0 is close to but not exactly the
    identity (grid rounding); :func:`apply_params` keeps unrotated samples untouched.
    """
    _, _, h, w = images.shape
    rad = torch.deg2rad(angle.to(device=images.device, dtype=torch.float32))
    cos, sin, zero = rad.cos(), rad.sin(), torch.zeros_like(rad)
    # theta maps output to input coordinates, normalised to [-1, 1] per axis; the h/w factors
    # keep the rotation rigid in pixels when H != W.
    theta = torch.stack(
        [torch.stack([cos, -sin * (h / w), zero], -1), torch.stack([sin * (w / h), cos, zero], -1)],
        dim=-2,
    ).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def margins(images: torch.Tensor) -> torch.Tensor:
    """Empty rows/columns around each image's content: (B, 4) int64 (top, bottom, left, right).

    A pixel is content when it is > 0 in any channel; an all-zero image has margins 0.
    """
    occupied = (images > 0).any(dim=1)  # (B, H, W)
    rows, cols = occupied.any(dim=2), occupied.any(dim=1)  # (B, H), (B, W)

    def first_true(mask: torch.Tensor) -> torch.Tensor:  # argmax returns the first maximum
        return mask.to(torch.uint8).argmax(dim=1)

    out = torch.stack(
        [first_true(rows), first_true(rows.flip(1)), first_true(cols), first_true(cols.flip(1))],
        dim=1,
    )
    return out * rows.any(dim=1, keepdim=True)


def shift_amounts(images: torch.Tensor, sign: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
    """Integer shifts (B, 2) int64 (dy, dx): ``sign * floor(frac * margin on that side)``.

    ``sign`` (B, 2) in {-1, +1} (+1 = down / right), ``frac`` (B, 2) in [0, 1).
    """
    top, bottom, left, right = margins(images).unbind(dim=1)
    sign = sign.to(images.device)
    margin = torch.stack(
        [torch.where(sign[:, 0] > 0, bottom, top), torch.where(sign[:, 1] > 0, right, left)], dim=1
    )
    # The paper: the digit stays whole; frac < 1 keeps the shift within the margin, so nothing clips.
    return sign * torch.floor(frac.to(images.device) * margin).long()


def translate(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Move (B, C, H, W) images by integer ``shifts`` (B, 2) (dy, dx) pixels, zero fill. Exact."""
    b, c, h, w = images.shape
    shifts = shifts.to(device=images.device, dtype=torch.long)
    src_rows = torch.arange(h, device=images.device) - shifts[:, :1]  # (B, H)
    src_cols = torch.arange(w, device=images.device) - shifts[:, 1:]  # (B, W)
    valid = ((src_rows >= 0) & (src_rows < h))[:, None, :, None] & (
        (src_cols >= 0) & (src_cols < w)
    )[:, None, None, :]
    out = images.gather(2, src_rows.clamp(0, h - 1)[:, None, :, None].expand(b, c, h, w))
    out = out.gather(3, src_cols.clamp(0, w - 1)[:, None, None, :].expand(b, c, h, w))
    return out.masked_fill(~valid, 0)


def squish(images: torch.Tensor, shrink: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Squeeze (B, C, H, W) images horizontally to ``W - shrink`` columns placed at ``offset``.

    ``shrink`` and ``offset`` are (B,) integer pixels; columns outside
    ``[offset, offset + W - shrink)`` become 0 (anything past column W is cropped). Area
    resampling: each output column averages the input span it covers, so the total mass of an
    uncropped image is multiplied by exactly ``(W - shrink) / W``.
    """
    width = images.shape[-1]
    device = images.device
    shrink = shrink.to(device=device, dtype=torch.long)
    offset = offset.to(device=device, dtype=torch.long)
    new_width = width - shrink  # (B,)
    scale = (width / new_width.to(torch.float32))[:, None, None]  # input px per output px
    out_col = torch.arange(width, device=device)[None, :, None]  # (1, W_out, 1)
    in_col = torch.arange(width, device=device, dtype=torch.float32)[None, None, :]  # (1, 1, W_in)
    start = (out_col - offset[:, None, None]).to(torch.float32) * scale  # (B, W_out, 1)
    overlap = (torch.minimum(start + scale, in_col + 1) - torch.maximum(start, in_col)).clamp(min=0)
    inside = (out_col >= offset[:, None, None]) & (out_col < (offset + new_width)[:, None, None])
    weights = (overlap / scale * inside).to(images.dtype)  # (B, W_out, W_in)
    return images @ weights.transpose(1, 2)[:, None]


def erase(images: torch.Tensor, corners: torch.Tensor, size: int = 4) -> torch.Tensor:
    """Zero a ``size`` x ``size`` patch at top-left ``corners`` (B, 2) (row, col), all channels."""
    _, _, h, w = images.shape
    corners = corners.to(device=images.device, dtype=torch.long)
    rows = torch.arange(h, device=images.device)[None, :] - corners[:, :1]  # (B, H)
    cols = torch.arange(w, device=images.device)[None, :] - corners[:, 1:]  # (B, W)
    in_rows = (rows >= 0) & (rows < size)
    in_cols = (cols >= 0) & (cols < size)
    return images.masked_fill(in_rows[:, None, :, None] & in_cols[:, None, None, :], 0)


def apply_params(
    images: torch.Tensor,
    params: Params,
    parts: Iterable[str] = PARTS,
    cfg: Optional[AugmentConfig] = None,
) -> torch.Tensor:
    """Apply the chosen ``parts`` (always in :data:`PARTS` order) with drawn ``params``.

    ``images`` (B, C, H, W) in [0, 1]; returns the same shape, dtype and device, in [0, 1].
    """
    cfg = cfg or AugmentConfig()
    parts = set(_check_parts(parts))
    p = {k: v.to(images.device) for k, v in params.items()}
    x = images
    if "rotate" in parts:
        x = torch.where(p["rotate"][:, None, None, None], rotate(x, p["angle"]), x)
    if "shift" in parts:
        x = translate(x, shift_amounts(x, p["shift_sign"], p["shift_frac"]))
    if "squish" in parts:
        x = squish(x, p["squish_w"], p["squish_offset"])
    if "erase" in parts:
        x = erase(x, p["erase_yx"], cfg.erase_size)
    return x.clamp(0, 1) if parts else x


def _check_parts(parts: Iterable[str]) -> Tuple[str, ...]:
    """Return ``parts`` in canonical order; ConfigError on an unknown name."""
    if isinstance(parts, str):
        parts = (parts,)
    parts = tuple(parts)
    for part in parts:
        if part not in PARTS:
            raise ConfigError(
                f"Unknown augmentation part {part!r}: valid parts are {', '.join(PARTS)} "
                f"(joined with '+'), or 'paper' for all of them and 'none' for no augmentation."
            )
    return tuple(p for p in PARTS if p in parts)


class MNISTAugment(torch.nn.Module):
    """The paper's MNIST training augmentation, or a subset of its steps, on whole batches.

    ``parts``: any of :data:`PARTS`; they always run in that order. Call as
    ``aug(images, generator=None)`` with images (B, C, H, W) float in [0, 1]; the generator
    may live on the images' device or on the CPU (then the params are drawn there and copied
    over, so a seed gives the same augmentation on any device).
    """

    def __init__(self, parts: Sequence[str] = PARTS, cfg: Optional[AugmentConfig] = None):
        super().__init__()
        self.parts = _check_parts(parts)
        self.cfg = cfg or AugmentConfig()

    @classmethod
    def from_spec(cls, spec: str, cfg: Optional[AugmentConfig] = None) -> "MNISTAugment":
        """Build from ``"paper"`` (all four), ``"none"`` or a "+"-joined list ("rotate+erase")."""
        name = spec.strip().lower()
        if name == "paper":
            return cls(PARTS, cfg)
        if name == "none":
            return cls((), cfg)
        return cls([part.strip() for part in name.split("+")], cfg)

    def forward(
        self, images: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """Augment (B, C, H, W) images; returns a tensor of the same shape, dtype and device."""
        if images.dim() != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
        if not self.parts:
            return images
        b, _, h, w = images.shape
        device = generator.device if generator is not None else images.device
        params = sample_params(b, h, w, generator=generator, device=device, cfg=self.cfg)
        return apply_params(images, params, self.parts, self.cfg)

    def extra_repr(self) -> str:
        return f"parts={'+'.join(self.parts) or 'none'}"


# Named augmentations other than the MNIST family (e.g. CIFAR-10's crop+flip, smallNORB's crop
# with brightness/contrast): name -> factory() returning a callable (images, generator) -> images.
AUGMENTATIONS: dict = {}


def build_augment(spec: str):
    """The training augmentation named by ``data.augment``: a registered name from
    AUGMENTATIONS, or an MNIST spec ("paper", "none", "rotate+erase", ...)."""
    name = spec.strip().lower()
    if name in AUGMENTATIONS:
        return AUGMENTATIONS[name]()
    return MNISTAugment.from_spec(name)


def _smallnorb():
    from effcn.data.preprocess import SmallNORBPreprocess
    return SmallNORBPreprocess()


def _cifar10():
    from effcn.data.preprocess import CIFARAugment
    return CIFARAugment()


AUGMENTATIONS.update({"smallnorb": _smallnorb, "cifar10": _cifar10})
