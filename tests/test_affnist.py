"""affNIST: the .mat reader (on small files written here), the affNIST-style generator, MNIST-40,
random placement, the 40x40 preset, and `effcn eval` reporting affNIST beside MNIST-40."""

from __future__ import annotations

import json
import math
import zipfile

import numpy as np
import pytest
import torch

from effcn.data.affnist import (AffNIST, AffNISTStyle, MNIST40, affine_matrices, crop_and_place,
                                make_affnist_style, read_affnist_mat, warp_digits)
from effcn.data.geometry import margins, pad_to, place_randomly
from effcn.data.transforms import build_augment
from effcn.errors import DataError

from helpers import REPO, asymmetric_images, quick_overrides, set_args, write_affnist_mat

sio = pytest.importorskip("scipy.io")


# ---------------------------------------------------------------------------- .mat reader
def test_read_affnist_mat_orientation_and_labels(tmp_path):
    images, labels = asymmetric_images(5), np.array([3, 1, 4, 1, 5])
    write_affnist_mat(tmp_path / "test.mat", images, labels)
    got_images, got_labels = read_affnist_mat(tmp_path / "test.mat")
    assert got_images.dtype == np.uint8 and got_images.shape == (5, 40, 40)
    np.testing.assert_array_equal(got_images, images)
    assert (got_images[:, 2, 30] == 255).all()
    np.testing.assert_array_equal(got_labels, labels)


def test_read_affnist_mat_bad_files(tmp_path):
    sio.savemat(str(tmp_path / "other.mat"), {"something": np.zeros((3, 3))})
    with pytest.raises(DataError, match="no affNISTdata struct"):
        read_affnist_mat(tmp_path / "other.mat")
    sio.savemat(str(tmp_path / "shape.mat"), {"affNISTdata": {
        "image": np.zeros((784, 2), np.uint8), "label_int": np.zeros((1, 2), np.uint8)}})
    with pytest.raises(DataError, match=r"expected uint8 of shape \(1600, N\)"):
        read_affnist_mat(tmp_path / "shape.mat")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(DataError, match="not a readable MATLAB file"):
        read_affnist_mat(tmp_path / "junk.mat")


def test_affnist_dataset_splits_and_missing(tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "affnist" / "training_and_validation_batches").mkdir(parents=True)
    write_affnist_mat(root / "affnist" / "test.mat", asymmetric_images(4), np.array([0, 1, 2, 3]))
    with pytest.raises(DataError, match="training_and_validation_batches.zip"):
        AffNIST(root, "train")  # batches missing: the message names the archive to fetch
    for i in range(1, 33):
        write_affnist_mat(root / "affnist" / "training_and_validation_batches" / f"{i}.mat",
                          asymmetric_images(2, seed=i), np.array([i % 10, (i + 1) % 10]))
    # the real files' image counts are checked: these small files are refused as cut short
    with pytest.raises(DataError, match=r"test.mat holds 4 images, but the real test file holds "
                                        r"320,000"):
        AffNIST(root, "test")
    with pytest.raises(DataError, match=r"1.mat holds 2 images, but the real train files hold "
                                        r"60,000 each"):
        AffNIST(root, "train")
    monkeypatch.setattr(AffNIST, "images_per_file", {"test": 4, "train": 2})
    test, train = AffNIST(root, "test"), AffNIST(root, "train")
    assert test.images.shape == (4, 40, 40) and test.labels.tolist() == [0, 1, 2, 3]
    assert len(train) == 64 and train.labels[:2].tolist() == [1, 2]
    image, label = test[2]
    assert image.shape == (1, 40, 40) and label == 2


def test_affnist_download_checks_and_extracts(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    write_affnist_mat(src / "test.mat", asymmetric_images(3), np.array([7, 8, 9]))
    with zipfile.ZipFile(src / "test.mat.zip", "w") as zf:
        zf.write(src / "test.mat", "test.mat")
    (src / "bad").mkdir()
    (src / "bad" / "test.mat.zip").write_bytes(b"not a zip")
    monkeypatch.setattr(AffNIST, "images_per_file", {})
    monkeypatch.setattr(AffNIST, "base_url", (src / "bad").as_uri() + "/")
    with pytest.raises(DataError, match="not a zip archive"):
        AffNIST(tmp_path / "root", "test", download=True)
    assert not (tmp_path / "root" / "test.mat.zip").exists()
    monkeypatch.setattr(AffNIST, "base_url", src.as_uri() + "/")
    ds = AffNIST(tmp_path / "root", "test", download=True)
    assert ds.labels.tolist() == [7, 8, 9] and (tmp_path / "root" / "test.mat").is_file()


# ------------------------------------------------------------------- placement, MNIST-40
def blob_digits(n: int, seed: int = 0) -> torch.Tensor:
    """28x28 uint8 'digits' of random shapes inside the central 20x20 (MNIST's margin of 4)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 28, 28, dtype=torch.uint8)
    x[:, 4:24, 4:24] = (torch.rand(n, 20, 20, generator=g) > 0.6).to(torch.uint8) * 255
    return x


def test_place_randomly_keeps_digits_whole_and_covers_the_canvas():
    one = torch.zeros(6000, 1, 12, 12)
    one[:, 0, 5, 5] = 1.0
    placed = place_randomly(one, torch.Generator().manual_seed(0))
    counts = placed.sum(0)[0]  # about 42 per position
    assert placed.sum().item() == 6000  # exact shifts: nothing lost
    assert counts.min() > 15 and counts.max() < 80  # every position, corners included, ~uniform
    digits = pad_to(blob_digits(50).float().unsqueeze(1), 40)
    placed = place_randomly(digits, torch.Generator().manual_seed(1))
    torch.testing.assert_close(placed.sum((1, 2, 3)), digits.sum((1, 2, 3)))
    aug = build_augment("place")
    again = aug(placed, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(again.sum((1, 2, 3)), digits.sum((1, 2, 3)))
    assert not torch.equal(again, placed)
    assert build_augment("place+paper")(placed, generator=torch.Generator().manual_seed(3)).shape == placed.shape


def test_mnist40_places_each_digit_whole_with_a_fixed_seed(synthetic_root, monkeypatch):
    monkeypatch.setattr(MNIST40, "sha256", {})
    ds, again = MNIST40(synthetic_root, "test"), MNIST40(synthetic_root, "test")
    from effcn.data.idx import read_idx
    raw = torch.from_numpy(read_idx(synthetic_root / "t10k-images-idx3-ubyte.gz"))
    assert ds.images.shape == (len(raw), 40, 40) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.images.long().sum((1, 2)), raw.long().sum((1, 2)))
    assert torch.equal(ds.images, again.images)
    centred = pad_to(raw, 40)
    assert not torch.equal(ds.images, centred)


# ----------------------------------------------------------------------- affNIST-style
def test_affine_matrices_ranges():
    g = torch.Generator().manual_seed(0)
    m = affine_matrices(2000, g)
    det = torch.linalg.det(m)  # rotation and shear have determinant 1: det = sx * sy
    assert det.min() >= 0.64 - 1e-9 and det.max() <= 1.44 + 1e-9
    rot = affine_matrices(2000, g, max_shear=0, scale=(1, 1))
    angles = torch.rad2deg(torch.atan2(rot[:, 1, 0], rot[:, 0, 0]))
    assert angles.abs().max() <= 20 + 1e-6 and angles.abs().max() > 19
    shear = affine_matrices(2000, g, max_rotation=0, scale=(1, 1))[:, 0, 1]
    assert shear.abs().max() <= math.tan(math.radians(40)) + 1e-9


def test_affnist_style_generator_properties():
    digits = blob_digits(32)
    out = make_affnist_style(digits, seed=3, chunk=20)
    assert out.shape == (32, 40, 40) and out.dtype == torch.uint8
    assert torch.equal(out, make_affnist_style(digits, seed=3, chunk=20))
    assert not torch.equal(out, make_affnist_style(digits, seed=4, chunk=20))
    assert (out.flatten(1).amax(1) > 0).all()
    # digits kept whole: every warped digit fits the canvas, and cropping/placing loses nothing
    warped = warp_digits(digits, torch.Generator().manual_seed(5))
    top, bottom, left, right = margins(warped).unbind(1)
    assert ((64 - top - bottom) <= 40).all() and ((64 - left - right) <= 40).all()
    placed = crop_and_place(warped, torch.Generator().manual_seed(6))
    assert placed.shape == (32, 1, 40, 40)
    torch.testing.assert_close(placed.sum((1, 2, 3)), warped.sum((1, 2, 3)))
    # with identity transforms the output is the digit itself, moved
    same = make_affnist_style(digits, seed=0, max_rotation=0, max_shear=0, scale=(1, 1))
    assert torch.equal(same.long().sum((1, 2)), digits.long().sum((1, 2)))


def test_affnist_style_dataset_is_cached(synthetic_root, tmp_path, monkeypatch):
    from effcn.data.mnist import MNIST
    monkeypatch.setattr(MNIST, "sha256", {})
    cache = tmp_path / "style.npz"
    ds = AffNISTStyle(synthetic_root, "test", cache=cache)
    assert cache.is_file() and ds.images.shape == (80, 40, 40) and len(ds.labels) == 80
    import effcn.data.affnist as affnist

    def boom(*a, **k):
        raise AssertionError("regenerated instead of reading the cache")
    monkeypatch.setattr(affnist, "make_affnist_style", boom)
    assert torch.equal(AffNISTStyle(synthetic_root, "test", cache=cache).images, ds.images)
    with pytest.raises(DataError, match="only a 'test' split"):
        AffNISTStyle(synthetic_root, "train", cache=cache)


def test_affnist_preset_has_16_primary_capsules():
    from effcn.models import create_model
    model = create_model("efficient_capsnet_affnist")
    assert model.config.feature_map_size() == 15 and model.config.num_primary_caps() == 16
    out = model.eval()(torch.rand(2, 1, 40, 40))
    assert out.lengths.shape == (2, 10) and out.reconstruction.shape == (2, 1, 40, 40)


# ------------------------------------------------------------------------- effcn eval
def test_eval_reports_affnist_style_beside_mnist40(synthetic_root, tmp_path, monkeypatch, capsys):
    from effcn.cli import main
    from effcn.data.mnist import MNIST
    monkeypatch.setattr(MNIST, "sha256", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    overrides = quick_overrides(synthetic_root, tmp_path / "runs", epochs=1, name="aff")
    overrides = [o for o in overrides if not o.startswith("data.dataset")]
    # primary kernel 15 on the 15x15 map: 4 capsules, as the 40x40 preset does (fast routing)
    overrides += ["data.dataset=mnist40", "data.augment=place", "model.args.image_size=40",
                  "model.args.primary_kernel=15", "data.train_subset=64"]
    args = ["train", "--config", str(REPO / "configs" / "affnist_cpu.yaml")]
    assert main(args + set_args(overrides)) == 0
    capsys.readouterr()
    run = tmp_path / "runs" / "aff"
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "MNIST-40 test" in out and "affNIST-style" in out
    assert len([line for line in out.splitlines() if line[:1].isdigit()]) >= 10
    report = json.loads((run / "eval" / "test_best.json").read_text())
    assert report["affnist_set"] == "affnist_style" and report["affnist_images"] == 80
    assert 0 <= report["affnist_acc"] <= 1 and len(report["affnist_per_class_acc"]) == 10
    summary = json.loads((run / "summary.json").read_text())
    assert "affnist_acc" not in summary  # eval writes its own report, never the summary
    assert report["acc"] == summary["test_acc"] and report["precision"] == "fp32"


def test_bn_momentum_is_configurable_and_defaults_to_keras():
    from effcn.models import create_model
    default = create_model("efficient_capsnet_affnist")
    fast = create_model("efficient_capsnet_affnist", bn_momentum=0.1)
    bns = lambda m: [l for l in m.stem if isinstance(l, torch.nn.BatchNorm2d)]  # noqa: E731
    assert [b.momentum for b in bns(default)] == [0.01] * 4
    assert [b.momentum for b in bns(fast)] == [0.1] * 4
