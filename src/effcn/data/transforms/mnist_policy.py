"""The authors' MNIST training augmentation (the policy) and its spec strings, batched.

The authors' MNIST pipeline (their TensorFlow code), per sample and in this order (training only):

1. rotate, with probability 0.5, by ``int(clip(N(0, .33), -.9999, .9999) * 30)`` degrees, with
   cv2 (``getRotationMatrix2D((W/2, H/2), angle, 1)`` + ``warpAffine``: bilinear, zeros outside);
   a positive angle turns the displayed image counter-clockwise;
2. shift each axis towards a random side, ``r = min(|N(0, .33)|, .9999)`` and ``margin`` the
   empty rows/columns between the digit's bounding box and that border: towards the top/left by
   ``ceil(r * margin)`` (their code writes ``floor(-r * margin)``), towards the bottom/right by
   ``floor(r * (margin + 1))``. Both are at most ``margin`` because ``r < 1``: the digit stays
   whole;
3. squish horizontally: the width shrinks by ``w = floor(min(|N|, .9999) * 7 + 1)`` px with
   ``tf.image.resize(..., method="lanczos3", antialias=True)`` (height unchanged), and the
   narrower image is placed at column ``w // 2 + floor(min(|N|, .9999) * 2)``; nothing is
   clipped, so Lanczos ringing leaves pixels below 0 and above 1;
4. erase a 4x4 patch whose top-left corner is uniform in ``[4, 22]`` on both axes.

``data.augment=paper`` is exactly that (:class:`AugmentConfig`'s defaults), checked against the
authors' own code run on MNIST digits: the rotation agrees bit for bit, the squish to float
rounding. effcn's earlier variant is kept as named options, each for the reason given in
:class:`AugmentConfig`; in a spec they follow a ``:``, comma-separated:

- ``floor``: ``shift_rounding="floor"``, ``floor(r * margin)`` towards both sides (about half the
  authors' mean shift);
- ``area``: ``squish_resample="area"``, exact area (box) weights, no ringing;
- ``centre``: ``rotation_centre="centre"``, rotation about ``((W-1)/2, (H-1)/2)`` sampled at
  exact positions (``grid_sample``);
- ``clamp``: ``clamp_output=True``, the output clamped to [0, 1];
- ``smooth``: all four, i.e. effcn's default before the authors' became it.

Spec strings (``data.augment``, :func:`build_augment`): ``PARTS[:OPTION[,OPTION...]]`` where
``PARTS`` is ``paper`` (all four steps), ``none``, or steps joined by ``+`` in any order
(``rotate+erase``); they always run in :data:`PARTS` order. ``paper_smooth`` is a registered
shorthand for ``paper:smooth``. Examples: ``paper`` (the authors' exact augmentation),
``paper_smooth`` (effcn's earlier variant, bit-identical to it), ``rotate+shift:floor``,
``paper:area,clamp``.

Every step works on a whole batch ``(B, C, H, W)`` at once, on the images' device, with no
Python loop over samples and no host-device sync. Drawing the random numbers
(:func:`sample_params`) is separate from using them (:func:`apply_params` and the per-step
functions :func:`rotate`, :func:`shift_amounts`, :func:`~effcn.data.geometry.translate`,
:func:`squish`, :func:`erase`), so the distributions can be tested on their own; the draws do not
depend on the options, so one (seed, epoch) generator gives the same draws under every variant.
:func:`apply_params` is the one function that applies the whole policy to a batch.

How exact: the rotation repeats cv2's fixed-point ``warpAffine`` (:func:`cv2_rotate` in
:mod:`effcn.data.transforms.cv2_tf`: sampling positions rounded to 1/32 pixel, exact bilinear
weights, the same summation order). The Lanczos weights follow TensorFlow's float32 arithmetic
step by step (:func:`tf_resize_weights`, same module), including the row pass TensorFlow runs
for the unchanged height (a near-identity whose off-diagonal weights are about -2.3e-8: they make
the exact zeros above and below a stroke slightly negative, which is part of the authors' share
of pixels below 0); sums run in another order than TensorFlow's, so outputs agree to about 1e-7.
The random numbers come from torch's generators, not TensorFlow's: same distributions, different
draws.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch

from effcn.data.geometry import line_offsets, margins, translate, warp_affine
from effcn.data.transforms.cv2_tf import cv2_rotate, cv2_rotate_whole_degrees, lanczos_bank
from effcn.errors import ConfigError

PARTS: Tuple[str, ...] = ("rotate", "shift", "squish", "erase")
"""The augmentation steps, in the fixed order they are applied."""

SHIFT_ROUNDINGS: Tuple[str, ...] = ("authors", "floor")
SQUISH_RESAMPLES: Tuple[str, ...] = ("lanczos3", "area")
ROTATION_CENTRES: Tuple[str, ...] = ("authors", "centre")

OPTIONS: Dict[str, Dict[str, object]] = {
    "floor": {"shift_rounding": "floor"},
    "area": {"squish_resample": "area"},
    "centre": {"rotation_centre": "centre"},
    "clamp": {"clamp_output": True},
}
"""Spec options (after ``:``) -> the AugmentConfig fields they set."""
OPTIONS["smooth"] = {k: v for o in ("floor", "area", "centre", "clamp")
                     for k, v in OPTIONS[o].items()}

NAMED_SPECS: Dict[str, str] = {"paper_smooth": "paper:smooth"}
"""Shorthand spec names -> the spec they stand for."""

Params = Dict[str, torch.Tensor]


@dataclass(frozen=True)
class AugmentConfig:
    """The numbers and variants of the augmentation; defaults are the authors' (28x28 MNIST).

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
    shift_rounding: str = "authors"
    """``"authors"``: ``ceil(r * margin)`` towards the top/left, ``floor(r * (margin + 1))``
    towards the bottom/right, as the authors' code does (mean |dy| about 1.3 px on MNIST).
    ``"floor"``: ``floor(r * margin)`` both ways, as the paper's text reads; it exists because it
    was effcn's earlier default (about half the mean shift, and most images keep their vertical
    position) and runs trained with it must stay reproducible. Both keep the digit whole."""
    squish_resample: str = "lanczos3"
    """``"lanczos3"``: TensorFlow's antialiased Lanczos-3 resize, as the authors' code
    (``tf.image.resize``): sharp, but it rings, leaving pixels below 0 and above 1.
    ``"area"``: exact area (box) weights; it exists as the ringing-free alternative (and effcn's
    earlier default): every weight is >= 0, so pixels stay in [0, 1], and an uncropped image's
    mass is scaled by exactly ``(W - w) / W``."""
    rotation_centre: str = "authors"
    """``"authors"``: about ``(W/2, H/2)`` in pixel-centre coordinates, i.e. cv2's
    ``getRotationMatrix2D((14, 14), ...)`` for 28x28, half a pixel right of and below the middle.
    Sampled as cv2 does (positions rounded to 1/32 pixel; angle 0 is the exact identity).
    ``"centre"``: about the true centre ``((W-1)/2, (H-1)/2)``, sampled at exact positions; it
    exists because it was effcn's earlier default and is the geometrically symmetric choice (a
    90-degree turn is exactly ``rot90``)."""
    clamp_output: bool = False
    """Clamp the augmented images to [0, 1]. The authors do not (so Lanczos ringing survives);
    True is effcn's earlier behaviour. With ``squish_resample="area"`` every step already stays in
    [0, 1], so the clamp then only removes float rounding (values like 1 + 1e-7)."""

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
            (self.shift_rounding in SHIFT_ROUNDINGS,
             f"shift_rounding must be one of {', '.join(SHIFT_ROUNDINGS)}"),
            (self.squish_resample in SQUISH_RESAMPLES,
             f"squish_resample must be one of {', '.join(SQUISH_RESAMPLES)}"),
            (self.rotation_centre in ROTATION_CENTRES,
             f"rotation_centre must be one of {', '.join(ROTATION_CENTRES)}"),
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
    - ``shift_frac`` (B, 2) float32 in [0, clip]: the fraction ``r`` of the margin to move;
    - ``squish_w`` (B,) int64 in [1, floor(squish_max + 1)]: columns removed by the squish;
    - ``squish_offset`` (B,) int64: first column of the squished image, ``w // 2 + {0, 1}``;
    - ``erase_yx`` (B, 2) int64: top-left corner (row, column) of the erased patch.

    The variant options of ``cfg`` (rounding, resampling, centre, clamp) do not change the draws.
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
    shift_sign = torch.where(uniform(batch_size, 2) < 0.5, 1, -1)
    shift_frac = fraction(batch_size, 2)
    # floor(...).long() of values >= 0: .long() truncates, which is the floor there
    squish_w = (fraction(*shape) * cfg.squish_max_for(width) + 1).long()
    squish_offset = squish_w // 2 + (fraction(*shape) * cfg.squish_extra_offset).long()
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


def rotate(images: torch.Tensor, angle: torch.Tensor, centre: str = "authors") -> torch.Tensor:
    """Rotate (B, C, H, W) images by ``angle`` (B,) degrees, counter-clockwise as displayed.

    cv2's convention: ``getRotationMatrix2D`` with a positive angle turns the displayed image
    (row 0 at the top) counter-clockwise, so a point right of the centre moves up. Bilinear,
    zeros outside (cv2's ``warpAffine`` defaults).

    ``centre="authors"``: cv2's ``warpAffine(img, getRotationMatrix2D((W/2, H/2), angle, 1))``
    as the authors call it ((14, 14) for 28x28), reproduced step by step (:func:`cv2_rotate`),
    including its fixed-point sampling positions (1/32 pixel). ``centre="centre"``: effcn's
    earlier rotation about the true centre ``((W-1)/2, (H-1)/2)``, sampled at exact positions
    (``grid_sample``); angle 0 is then close to but not exactly the identity (grid rounding).
    :func:`apply_params` keeps unrotated samples untouched either way.
    """
    if centre not in ROTATION_CENTRES:
        raise ConfigError(f"Unknown rotation centre {centre!r}: use one of "
                          f"{', '.join(ROTATION_CENTRES)}.")
    if centre == "authors":
        return cv2_rotate(images, angle)
    _, _, h, w = images.shape
    rad = torch.deg2rad(angle.to(device=images.device, dtype=torch.float32))
    cos, sin, zero = rad.cos(), rad.sin(), torch.zeros_like(rad)
    # theta maps output to input coordinates, normalised to [-1, 1] per axis; the h/w factors
    # keep the rotation rigid in pixels when H != W.
    theta = torch.stack(
        [torch.stack([cos, -sin * (h / w), zero], -1), torch.stack([sin * (w / h), cos, zero], -1)],
        dim=-2,
    ).to(images.dtype)
    return warp_affine(images, theta)


def shift_amounts(
    images: torch.Tensor, sign: torch.Tensor, frac: torch.Tensor, rounding: str = "authors"
) -> torch.Tensor:
    """Integer shifts (B, 2) int64 (dy, dx) within the margins on the chosen sides.

    ``sign`` (B, 2) in {-1, +1} (+1 = down / right), ``frac`` (B, 2) in [0, 1).
    ``rounding="authors"``: ``-ceil(frac * margin)`` towards the top/left (computed as the
    authors' ``floor(-frac * margin)``), ``+floor(frac * (margin + 1))`` towards the bottom/right.
    ``rounding="floor"``: ``sign * floor(frac * margin)``.
    Either way ``|shift| <= margin`` because ``frac < 1`` (``frac * (margin + 1) < margin + 1``),
    so the digit stays whole; :func:`translate` then moves it exactly.
    """
    if rounding not in SHIFT_ROUNDINGS:
        raise ConfigError(f"Unknown shift rounding {rounding!r}: use one of "
                          f"{', '.join(SHIFT_ROUNDINGS)}.")
    edges = margins(images)  # (B, 4): top, bottom, left, right
    sign = sign.to(device=images.device, dtype=torch.long)
    frac = frac.to(device=images.device, dtype=torch.float32)
    down = sign > 0
    margin = torch.where(down, edges[:, 1::2], edges[:, 0::2])  # (B, 2) towards the chosen side
    if rounding == "floor":
        return sign * torch.floor(frac * margin).long()
    # frac * (margin + 1) downwards, frac * -margin = -(frac * margin) upwards, exactly
    return torch.floor(frac * ((margin + down) * sign)).long()


_PLACED: Dict[tuple, Tuple[torch.Tensor, ...]] = {}  # _placed_bank's tensors, per key


def _placed_bank(height: int, width: int, device: torch.device, dtype: torch.dtype):
    """``(rows, placed, columns)``: :func:`lanczos_bank`'s row weights; its column weights
    padded to (W + 1, 3W, W) so that one lookup places them: ``placed[k, W + j] = bank[k, j]``
    for ``j < W``, every other row 0, and ``placed[W]`` all 0 (a shrink by the whole width);
    and ``columns`` = ``W + arange(W)``, the rows of output columns placed at offset 0."""
    key = ("placed", height, width, str(device), dtype)
    if key not in _PLACED:
        rows, bank = lanczos_bank(height, width, device, dtype)
        placed = bank.new_zeros(width + 1, 3 * width, width)
        placed[:width, width:2 * width] = bank
        _PLACED[key] = (rows, placed, width + torch.arange(width, device=device))
    return _PLACED[key]


def squish(
    images: torch.Tensor, shrink: torch.Tensor, offset: torch.Tensor, resample: str = "lanczos3"
) -> torch.Tensor:
    """Squeeze (B, C, H, W) images horizontally to ``W - shrink`` columns placed at ``offset``.

    ``shrink`` (in [0, W]) and ``offset`` are (B,) integer pixels; columns outside
    ``[offset, offset + W - shrink)`` become 0 (anything past column W is cropped), as the
    authors' ``pad_to_bounding_box`` + ``crop_to_bounding_box``.

    ``resample="lanczos3"``: TensorFlow's antialiased Lanczos-3 (:func:`tf_resize_weights`),
    rows then columns as TensorFlow does; it rings (values below 0 and above 1) and is not
    clipped here. ``resample="area"``: each output column averages the input span it covers,
    so the total mass of an uncropped image is multiplied by exactly ``(W - shrink) / W``.
    """
    if resample not in SQUISH_RESAMPLES:
        raise ConfigError(f"Unknown squish resampling {resample!r}: use one of "
                          f"{', '.join(SQUISH_RESAMPLES)}.")
    height, width = images.shape[-2:]
    device = images.device
    shrink = shrink.to(device=device, dtype=torch.long)
    offset = offset.to(device=device, dtype=torch.long)
    if resample == "lanczos3":
        rows, placed, columns = _placed_bank(height, width, device, images.dtype)
        # Output column c takes resized column c - offset, i.e. row W + c - offset of the padded
        # bank: outside [offset, offset + W - shrink) that row is 0.
        src = (columns[None, :] - offset[:, None]).clamp(0, 3 * width - 1)
        weights = placed[shrink.clamp(0, width)[:, None], src]  # (B, W_out, W_in)
        tall = torch.einsum("yi,bcix->bcyx", rows, images)
        return torch.einsum("bcyx,bkx->bcyk", tall, weights)
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
    if size <= 0:
        return images
    _, _, h, w = images.shape
    inside = line_offsets(corners.to(images.device), h, w)  # (B, H+W): row - y, then col - x
    inside = inside.clamp(0, size - 1) == inside  # 0 <= row - y < size, likewise the columns
    return images.masked_fill(inside[:, None, :h, None] & inside[:, None, None, h:], 0)


def apply_params(
    images: torch.Tensor,
    params: Params,
    parts: Iterable[str] = PARTS,
    cfg: Optional[AugmentConfig] = None,
) -> torch.Tensor:
    """Apply the chosen ``parts`` (always in :data:`PARTS` order) with drawn ``params``.

    ``images`` (B, C, H, W) in [0, 1]; returns the same shape, dtype and device. With the
    authors' defaults the Lanczos squish leaves some pixels outside [0, 1]; ``cfg.clamp_output``
    clamps them (and ``squish_resample="area"`` never leaves [0, 1] beyond float rounding).
    ``params`` as :func:`sample_params` draws them: the authors' rotation looks its taps up per
    whole-degree angle within ``cfg.max_rotation`` (:func:`cv2_rotate_whole_degrees`).
    """
    cfg = cfg or AugmentConfig()
    parts = set(_check_parts(parts))
    p = {k: v.to(images.device) for k, v in params.items()}
    x = images
    if "rotate" in parts:
        if cfg.rotation_centre == "authors":  # sample_params draws whole degrees within the range
            rotated = cv2_rotate_whole_degrees(x, p["angle"], int(cfg.max_rotation))
        else:
            rotated = rotate(x, p["angle"], cfg.rotation_centre)
        x = torch.where(p["rotate"][:, None, None, None], rotated, x)
    if "shift" in parts:
        x = translate(x, shift_amounts(x, p["shift_sign"], p["shift_frac"], cfg.shift_rounding))
    if "squish" in parts:
        x = squish(x, p["squish_w"], p["squish_offset"], cfg.squish_resample)
    if "erase" in parts:
        x = erase(x, p["erase_yx"], cfg.erase_size)
    return x.clamp(0, 1) if parts and cfg.clamp_output else x


def _hint(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _spec_help(registered: Sequence[str]) -> str:
    registered = ", ".join(sorted(registered))
    return (f"valid parts are {', '.join(PARTS)} (joined with '+'); or use 'paper' for all of "
            f"them (the authors' exact augmentation), 'paper_smooth' (effcn's earlier variant), "
            f"'none' for no augmentation" + (f", or one of {registered}" if registered else ""))


def _check_parts(parts: Iterable[str], registered: Sequence[str] = ()) -> Tuple[str, ...]:
    """Return ``parts`` in canonical order; ConfigError on an unknown name (``registered``: the
    other augmentation names, offered in the message)."""
    if isinstance(parts, str):
        parts = (parts,)
    parts = tuple(parts)
    for part in parts:
        if part not in PARTS:
            names = (*PARTS, "paper", "none", *NAMED_SPECS, *registered)
            raise ConfigError(
                f"Unknown augmentation part {part!r}{_hint(part, names)}: {_spec_help(registered)}.")
    return tuple(p for p in PARTS if p in parts)


def parse_spec(
    spec: str, cfg: Optional[AugmentConfig] = None, registered: Sequence[str] = ()
) -> Tuple[Tuple[str, ...], AugmentConfig]:
    """``(parts, cfg)`` of an MNIST spec ``PARTS[:OPTION[,OPTION...]]`` (see the module
    docstring): ``cfg`` (default: the authors') with the options applied. ConfigError, one
    sentence, on an unknown part or option; ``registered`` (the registry's other names) are
    offered as alternatives."""
    head, _, tail = spec.strip().lower().partition(":")
    head = head.strip()
    if head in NAMED_SPECS:  # a shorthand, possibly with more options ("paper_smooth:...")
        head, _, implied = NAMED_SPECS[head].partition(":")
        tail = f"{implied},{tail}"
    overrides: Dict[str, object] = {}
    for option in filter(None, (o.strip() for o in tail.split(","))):
        if option not in OPTIONS:
            raise ConfigError(
                f"Unknown augmentation option {option!r}{_hint(option, OPTIONS)} in "
                f"{spec.strip()!r}: valid options after ':' (comma-separated, e.g. 'paper:floor') "
                f"are {', '.join(OPTIONS)}, where 'smooth' is all four (effcn's earlier variant).")
        overrides.update(OPTIONS[option])
    if head == "paper":
        parts: Tuple[str, ...] = PARTS
    elif head == "none":
        parts = ()
    else:
        parts = _check_parts([part.strip() for part in head.split("+")], registered)
    return parts, dataclasses.replace(cfg or AugmentConfig(), **overrides)


class MNISTAugment(torch.nn.Module):
    """The authors' MNIST training augmentation, or a subset of its steps, on whole batches.

    ``parts``: any of :data:`PARTS`; they always run in that order. ``cfg`` picks the numbers
    and the variants (:class:`AugmentConfig`). Call as ``aug(images, generator=None)`` with
    images (B, C, H, W) float in [0, 1]; the generator may live on the images' device or on the
    CPU (then the params are drawn there and copied over, so a seed gives the same augmentation
    on any device).
    """

    def __init__(self, parts: Sequence[str] = PARTS, cfg: Optional[AugmentConfig] = None):
        super().__init__()
        self.parts = _check_parts(parts)
        self.cfg = cfg or AugmentConfig()

    @classmethod
    def from_spec(cls, spec: str, cfg: Optional[AugmentConfig] = None) -> "MNISTAugment":
        """Build from a spec: ``"paper"`` (all four, the authors' exact augmentation),
        ``"paper_smooth"``, ``"none"``, a "+"-joined list ("rotate+erase"), each optionally
        followed by ``:`` and comma-separated options ("paper:area,clamp")."""
        parts, cfg = parse_spec(spec, cfg)
        return cls(parts, cfg)

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
        default = AugmentConfig()
        changed = [f"{f}={getattr(self.cfg, f)!r}" for f in
                   ("shift_rounding", "squish_resample", "rotation_centre", "clamp_output")
                   if getattr(self.cfg, f) != getattr(default, f)]
        return ", ".join([f"parts={'+'.join(self.parts) or 'none'}", *changed])
