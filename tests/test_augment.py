"""Tests for effcn.data.transforms.mnist_policy: the paper's MNIST augmentation, batched.

The authors'-code specifics of the default (shift rounding, TensorFlow's Lanczos-3 squish, cv2's
rotation centre) and the comparison with statistics of the authors' own code are in
test_augment_authors.py; this file covers what every variant shares, and effcn's earlier variant
(``paper_smooth``) under its option names."""

import math
import re

import numpy as np
import pytest
import torch

from effcn.data.geometry import margins, translate
from effcn.data.transforms import build_augment
from effcn.data.transforms.mnist_policy import (
    OPTIONS,
    PARTS,
    AugmentConfig,
    MNISTAugment,
    apply_params,
    erase,
    rotate,
    sample_params,
    shift_amounts,
    squish,
)
from effcn.errors import ConfigError

SIGMA = 0.33
N_DRAWS = 20000
SMOOTH = AugmentConfig(**OPTIONS["smooth"])  # effcn's earlier variant (data.augment=paper_smooth)


def gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@pytest.fixture(scope="module")
def params():
    return sample_params(N_DRAWS, 28, 28, gen(0), "cpu")


def half_normal_cdf(x: float) -> float:
    """P(|N(0, SIGMA)| < x)."""
    return math.erf(x / (SIGMA * math.sqrt(2)))


def assert_frequency(count: int, n: int, p: float, z: float = 5.0) -> None:
    assert abs(count - n * p) <= z * math.sqrt(n * p * (1 - p)) + 1, (count, n, p)


def blob_images(n: int, size: int = 28, seed: int = 0) -> torch.Tensor:
    """(n, 1, size, size) rectangles at random places, many touching a border; values k/256."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 1, size, size), np.float32)
    for i in range(n):
        h, w = rng.integers(1, size // 2, 2)
        y = rng.choice([0, size - h, rng.integers(0, size - h + 1)])
        x = rng.choice([0, size - w, rng.integers(0, size - w + 1)])
        out[i, 0, y : y + h, x : x + w] = rng.integers(1, 257, (h, w)) / 256
    out[0] = 0  # all-zero image
    out[1, 0, 10:12, :] = 1  # full-width bar: no horizontal margin
    return torch.from_numpy(out)


def disc_images(n: int, size: int = 28, seed: int = 0) -> torch.Tensor:
    """(n, 1, size, size) strokes inside the disc that no rotation moves out of the frame."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    out = np.zeros((n, 1, size, size), np.float32)
    for i in range(n):
        r = rng.uniform(3, size / 2 - 3)
        ring = np.clip(1.5 - np.abs(np.hypot(yy, xx) - r), 0, 1)
        out[i, 0] = ring * (rng.uniform(size=(size, size)) > 0.3)
    return torch.from_numpy(out)


# --- sampled distributions --------------------------------------------------------------------


def test_rotation_probability_and_angles(params):
    assert_frequency(int(params["rotate"].sum()), N_DRAWS, 0.5)
    angle = params["angle"]
    assert torch.equal(angle, angle.round())
    assert angle.min() >= -29 and angle.max() <= 29
    assert angle.min() == -29 and angle.max() == 29
    rng = np.random.default_rng(0)
    expected = np.trunc(np.clip(rng.normal(0, SIGMA, 1_000_000), -0.9999, 0.9999) * 30)
    assert abs(angle.std().item() - expected.std()) < 0.2
    assert abs(angle.mean().item()) < 0.2


def test_squish_width_and_offset_frequencies(params):
    w = params["squish_w"]
    assert w.min() == 1 and w.max() == 7
    for k in range(1, 8):
        upper = 1.0 if k == 7 else half_normal_cdf(k / 7)
        p = upper - half_normal_cdf((k - 1) / 7)
        assert_frequency(int((w == k).sum()), N_DRAWS, p)
    extra = params["squish_offset"] - w // 2
    assert set(extra.unique().tolist()) == {0, 1}
    assert_frequency(int((extra == 1).sum()), N_DRAWS, 1 - half_normal_cdf(0.5))


def test_shift_signs_and_fractions(params):
    sign, frac = params["shift_sign"], params["shift_frac"]
    assert set(sign.unique().tolist()) == {-1, 1}
    for axis in range(2):
        assert_frequency(int((sign[:, axis] > 0).sum()), N_DRAWS, 0.5)
    assert frac.min() >= 0 and frac.max() <= 0.9999
    assert_frequency(int((frac < 0.33).sum()), 2 * N_DRAWS, half_normal_cdf(0.33))


def test_erase_corners_uniform(params):
    corners = params["erase_yx"]
    for axis in range(2):
        counts = torch.bincount(corners[:, axis], minlength=23)
        assert counts[:4].sum() == 0 and len(counts) == 23  # nothing outside [4, 22]
        for c in counts[4:].tolist():
            assert_frequency(c, N_DRAWS, 1 / 19)


def test_config_scales_with_image_size():
    cfg = AugmentConfig()
    assert cfg.erase_range_for(28) == (4, 22) and cfg.erase_range_for(40) == (4, 34)
    assert cfg.squish_max_for(28) == 7 and cfg.squish_max_for(40) == 10
    p = sample_params(4000, 40, 40, gen(1), "cpu")
    assert p["squish_w"].max() == 10
    assert p["erase_yx"].min() == 4 and p["erase_yx"].max() == 34
    with pytest.raises(ConfigError):
        AugmentConfig(rotate_prob=1.5)
    with pytest.raises(ConfigError):
        AugmentConfig(erase_range=(4, 30)).erase_range_for(28)


# --- the steps --------------------------------------------------------------------------------


@pytest.mark.parametrize("rounding", ["authors", "floor"])
def test_shift_is_exact_translation_within_margins(rounding):
    torch.manual_seed(0)
    x = blob_images(64).repeat(8, 1, 1, 1)  # 512 images, each seen with 8 draws
    p = sample_params(len(x), 28, 28, gen(2), "cpu")
    shifts = shift_amounts(x, p["shift_sign"], p["shift_frac"], rounding)
    out = translate(x, shifts)
    # Values are multiples of 1/256, so the float32 sums are exact whatever the order.
    assert torch.equal(out.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)))
    m = margins(x).numpy()
    sign, frac = p["shift_sign"].numpy(), p["shift_frac"].numpy()

    def expected_shift(s: int, f: np.float32, mg: int) -> int:
        if rounding == "floor":
            return int(s * math.floor(f * np.float32(mg)))
        # the authors: ceil(r * margin) up / left, floor(r * (margin + 1)) down / right
        return math.floor(f * np.float32(mg + 1)) if s > 0 else -math.ceil(f * np.float32(mg))

    for b in range(len(x)):
        dy, dx = shifts[b].tolist()
        assert torch.equal(out[b], torch.roll(x[b], (dy, dx), dims=(1, 2)))
        margin = [m[b, 1] if sign[b, 0] > 0 else m[b, 0], m[b, 3] if sign[b, 1] > 0 else m[b, 2]]
        assert [dy, dx] == [expected_shift(*a) for a in zip(sign[b], frac[b], margin)]
        assert abs(dy) <= margin[0] and abs(dx) <= margin[1]
    assert shifts[0].abs().sum() == 0  # all-zero image
    assert (shifts[1::64, 1] == 0).all()  # full-width bar cannot move sideways
    assert (shifts > 0).any() and (shifts < 0).any()


def test_margins():
    x = torch.zeros(2, 2, 28, 28)
    x[0, 1, 3:10, 5:27] = 0.5
    assert margins(x).tolist() == [[3, 18, 5, 1], [0, 0, 0, 0]]


def test_margins_translate_and_erase_match_per_sample_slicing():
    """Odd sizes, several channels, empty images, shifts and corners beyond the image."""
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(40, 3, 13, 17, generator=g) > 0.97).float()
    x[:3] = 0
    x[5, 2, 12, 0] = 1  # content only in the last channel, bottom-left pixel
    shifts = torch.randint(-20, 21, (40, 2), generator=g)
    corners = torch.randint(-5, 20, (40, 2), generator=g)
    moved, edges = translate(x, shifts), margins(x)
    for b in range(40):
        rows = x[b].amax(dim=(0, 2)).nonzero().flatten().tolist()
        cols = x[b].amax(dim=(0, 1)).nonzero().flatten().tolist()
        expected = [rows[0], 12 - rows[-1], cols[0], 16 - cols[-1]] if rows else [0, 0, 0, 0]
        assert edges[b].tolist() == expected
        dy, dx = shifts[b].tolist()
        want = torch.zeros(3, 13, 17)
        if abs(dy) < 13 and abs(dx) < 17:
            want[:, max(dy, 0):13 + min(dy, 0), max(dx, 0):17 + min(dx, 0)] = \
                x[b, :, max(-dy, 0):13 - max(dy, 0), max(-dx, 0):17 - max(dx, 0)]
        assert torch.equal(moved[b], want)
        cy, cx = corners[b].tolist()
        patch = torch.ones(13, 17)
        patch[max(cy, 0):max(cy + 3, 0), max(cx, 0):max(cx + 3, 0)] = 0
        assert torch.equal(erase(x, corners, 3)[b], x[b] * patch)
    assert torch.equal(erase(x, corners, 0), x)  # a 0-pixel patch erases nothing


def test_squish_by_the_whole_width_is_empty_and_by_nothing_is_a_shift():
    x = torch.rand(1, 1, 28, 28).repeat(4, 1, 1, 1)
    shrink, offset = torch.tensor([28, 0, 0, 0]), torch.tensor([0, 0, 3, -2])
    out = squish(x, shrink, offset)
    assert torch.equal(out[0], torch.zeros(1, 28, 28))
    # no shrink: the (near-identity) Lanczos pass of the unchanged size, placed at the offset
    assert torch.allclose(out[2, ..., 3:], out[1, ..., :-3]) and (out[2, ..., :3] == 0).all()
    assert torch.allclose(out[3, ..., :-2], out[1, ..., 2:]) and (out[3, ..., -2:] == 0).all()


def test_rotate_direction_and_rigidity_about_the_true_centre():
    # rotation_centre="centre" (effcn's earlier default): 90 degrees is exactly rot90.
    x = disc_images(3)
    out = rotate(x, torch.full((3,), 90.0), "centre")
    assert torch.allclose(out, torch.rot90(x, 1, (2, 3)), atol=1e-5)
    # Non-square: a centred 2x6 bar turns into a 6x2 bar (counter-clockwise, no stretching).
    y = torch.zeros(1, 1, 20, 30)
    y[0, 0, 9:11, 12:18] = 1
    expected = torch.zeros_like(y)
    expected[0, 0, 7:13, 14:16] = 1
    assert torch.allclose(rotate(y, torch.tensor([90.0]), "centre"), expected, atol=1e-5)


@pytest.mark.parametrize("resample", ["lanczos3", "area"])
def test_squish_places_band_at_offset(resample):
    x = torch.ones(64, 1, 28, 28)
    p = sample_params(64, 28, 28, gen(3), "cpu")
    out = squish(x, p["squish_w"], p["squish_offset"], resample)
    cols = torch.arange(28)
    lo, hi = p["squish_offset"][:, None], (p["squish_offset"] + 28 - p["squish_w"])[:, None]
    band = ((cols >= lo) & (cols < hi)).float()[:, None, None, :].expand_as(out)
    assert torch.allclose(out, band, atol=1e-5)


def test_erase_zeroes_exactly_one_patch():
    x = torch.ones(300, 2, 28, 28)
    corners = sample_params(300, 28, 28, gen(4), "cpu")["erase_yx"]
    out = erase(x, corners, 4)
    assert ((out == 0).sum(dim=(2, 3)) == 16).all()
    for b in range(0, 300, 7):
        y, xx = corners[b].tolist()
        assert (out[b, :, y : y + 4, xx : xx + 4] == 0).all()


@pytest.mark.parametrize("cfg", [AugmentConfig(), SMOOTH], ids=["authors", "smooth"])
def test_digit_stays_whole_after_rotate_shift_squish(cfg):
    x = torch.cat([disc_images(256, seed=1), blob_images(256, seed=2)])
    p = sample_params(len(x), 28, 28, gen(5), "cpu")
    p["rotate"][256:] = False  # border-touching blobs would lose corners to rotation itself
    rotated = apply_params(x, p, ("rotate",), cfg)
    shifted = apply_params(x, p, ("rotate", "shift"), cfg)
    mass_x, mass_rot, mass_shift = (t.sum(dim=(1, 2, 3)) for t in (x, rotated, shifted))
    assert torch.allclose(mass_rot[:256], mass_x[:256], rtol=0.02)
    assert torch.allclose(mass_shift, mass_rot, rtol=1e-6, atol=1e-5)  # nothing leaves the frame
    assert p["rotate"][:256].any() and (p["squish_w"] == 7).any()
    if cfg.squish_resample == "area":
        full = apply_params(x, p, ("rotate", "shift", "squish"), cfg)
        kept = (28 - p["squish_w"]).float() / 28  # squish scales mass by exactly (W - w) / W
        assert torch.allclose(full.sum(dim=(1, 2, 3)), mass_rot * kept, rtol=1e-4, atol=1e-4)


# --- the module -------------------------------------------------------------------------------


def test_from_spec():
    assert MNISTAugment.from_spec("paper").parts == PARTS
    assert MNISTAugment.from_spec("paper").cfg == AugmentConfig()  # the authors' exact variant
    assert MNISTAugment.from_spec("none").parts == ()
    assert MNISTAugment.from_spec("erase+rotate").parts == ("rotate", "erase")
    assert MNISTAugment.from_spec(" Rotate + Squish ").parts == ("rotate", "squish")
    smooth = MNISTAugment.from_spec("paper_smooth")
    assert smooth.parts == PARTS and smooth.cfg == SMOOTH
    assert (SMOOTH.shift_rounding, SMOOTH.squish_resample, SMOOTH.rotation_centre,
            SMOOTH.clamp_output) == ("floor", "area", "centre", True)
    assert MNISTAugment.from_spec("paper:smooth").cfg == SMOOTH
    assert MNISTAugment.from_spec("paper_smooth:floor,").cfg == SMOOTH
    part = MNISTAugment.from_spec("rotate+shift : floor, centre")
    assert part.parts == ("rotate", "shift")
    assert (part.cfg.shift_rounding, part.cfg.rotation_centre) == ("floor", "centre")
    assert part.cfg.squish_resample == "lanczos3" and not part.cfg.clamp_output
    assert MNISTAugment.from_spec("squish:area,clamp").cfg == AugmentConfig(
        squish_resample="area", clamp_output=True)
    assert "shift_rounding='floor'" in repr(smooth) and "lanczos" not in repr(smooth)
    with pytest.raises(ConfigError, match="'flip'.*rotate, shift, squish, erase"):
        MNISTAugment.from_spec("rotate+flip")
    with pytest.raises(ConfigError, match=r"option 'round' in 'paper:round'.*floor, area, centre"):
        MNISTAugment.from_spec("paper:round")
    with pytest.raises(ConfigError):
        MNISTAugment.from_spec("")
    with pytest.raises(ConfigError, match="shift_rounding must be one of authors, floor"):
        AugmentConfig(shift_rounding="ceil")


def test_build_augment_names_and_one_sentence_errors():
    assert build_augment("paper").cfg == AugmentConfig()
    assert build_augment("PAPER_SMOOTH").cfg == SMOOTH
    assert build_augment("rotate+erase:centre").parts == ("rotate", "erase")
    for bad in ("paper_smoth", "rotate+shift:flor", "pape"):
        with pytest.raises(ConfigError) as err:
            build_augment(bad)
        message = str(err.value)
        one_sentence = not re.search(r"[.?!]\s+[A-Z]", message) and "\n" not in message
        assert one_sentence and message.endswith("."), message
        assert "paper" in message


def test_none_is_identity_and_rotate_leaves_unrotated_samples_untouched():
    x = disc_images(32)
    assert torch.equal(MNISTAugment.from_spec("none")(x, gen(0)), x)
    p = sample_params(32, 28, 28, gen(6), "cpu")
    out = apply_params(x, p, ("rotate",))
    keep = ~p["rotate"]
    assert keep.any() and torch.equal(out[keep], x[keep])
    assert not torch.allclose(out[~keep & (p["angle"] != 0)], x[~keep & (p["angle"] != 0)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spec", ["paper", "paper_smooth"])
def test_paper_output_shape_range_and_repeatability(dtype, spec):
    x = torch.rand(512, 1, 28, 28, generator=gen(7)).to(dtype) * (torch.rand(512, 1, 28, 28) > 0.7)
    aug = MNISTAugment.from_spec(spec)
    out = aug(x, gen(8))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    if spec == "paper_smooth":
        assert out.min() >= 0 and out.max() <= 1
    else:  # the authors' Lanczos squish rings and is not clipped
        assert out.min() < -0.01 and out.max() > 1.01 and out.min() > -0.5 and out.max() < 1.5
    assert torch.equal(out, aug(x, gen(8)))
    assert not torch.equal(out, aug(x, gen(9)))
    torch.manual_seed(0)
    assert aug(x).shape == x.shape  # global RNG


def test_variants_share_the_draws():
    # One (seed, epoch) generator gives the same draws whatever the variant: with the squish and
    # shift switched off, and no ringing to clamp, only the rotation centre differs.
    x = disc_images(64)
    parts = ("rotate", "erase")
    authors = MNISTAugment(parts)(x, gen(12))
    centred = MNISTAugment(parts, AugmentConfig(rotation_centre="centre"))(x, gen(12))
    smooth = MNISTAugment(parts, SMOOTH)(x, gen(12))
    assert torch.equal(centred.clamp(0, 1), smooth)
    assert not torch.equal(authors, centred)
    p = sample_params(64, 28, 28, gen(12), "cpu")
    assert torch.equal(apply_params(x, p, parts), authors)


@pytest.mark.parametrize("cfg", [AugmentConfig(), SMOOTH], ids=["authors", "smooth"])
def test_other_sizes_and_channels(cfg):
    x = torch.rand(16, 2, 40, 40)
    out = MNISTAugment(PARTS, cfg)(x, gen(10))
    assert out.shape == x.shape
    if cfg.clamp_output:
        assert out.min() >= 0 and out.max() <= 1
    assert ((out == 0).all(dim=1).sum(dim=(1, 2)) >= 16).all()  # the patch spans every channel


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("spec", ["paper", "paper_smooth"])
def test_cuda_matches_cpu(spec):
    x = disc_images(64)
    aug = MNISTAugment.from_spec(spec)
    cpu = aug(x, gen(11))
    on_gpu = aug(x.cuda(), gen(11))  # CPU generator: same params on any device
    assert on_gpu.is_cuda and torch.allclose(on_gpu.cpu(), cpu, atol=1e-4)
    cuda_gen = aug(x.cuda(), gen(11, "cuda"))
    assert torch.equal(cuda_gen, aug(x.cuda(), gen(11, "cuda")))


@pytest.mark.parametrize("spec", ["paper", "paper_smooth"])
def test_forward_reads_nothing_back_from_the_device(spec, monkeypatch):
    # No .item(), no bool() of a tensor, ...: on a GPU each of these would wait for the device.
    x = disc_images(16)
    aug = MNISTAugment.from_spec(spec)
    aug(x, gen(13))  # the first call builds the Lanczos weights once (on the host, by design)
    reads = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        def read(self, *args, _real=getattr(torch.Tensor, name), _name=name, **kwargs):
            reads.append(_name)
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, read)
    aug(x, gen(13))
    aug(x, None)
    monkeypatch.undo()
    assert reads == []
