"""smallNORB, CIFAR-10 and Fashion-MNIST readers, their preprocessing, and the trainer's
evaluation-transform hook, on files these tests write in the real formats."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from effcn.cli import main
from effcn.data import CIFAR10, FashionMNIST, SmallNORB, get_dataset
from effcn.data.cifar10 import load_batch
from effcn.data.geometry import crop_batch
from effcn.data.transforms.preprocess import CIFARAugment, SmallNORBPreprocess, standardize
from effcn.data.smallnorb import norb_bytes, parse_norb
from effcn.errors import ConfigError, DataError
from effcn.training.config_io import load_config
from effcn.training.config import Config
from effcn.training.evaluate import evaluate
from effcn.training.tasks.classification import ClassificationTask, ImageSet
from effcn.training.trainer import Trainer

from helpers import cifar_batch, write_cifar_archive, write_keras_h5, write_smallnorb

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


# ------------------------------------------------------------------ NORB format
def test_norb_header_is_the_documented_layout():
    labels = np.array([0, 4, 2], dtype=np.int32)
    data = norb_bytes(labels)
    # magic 0x1E3D4C54 (int32 matrix) little-endian, ndim 1, then 3 sizes (2 of them padding)
    assert data[:4] == bytes([0x54, 0x4C, 0x3D, 0x1E])
    assert struct.unpack("<iiiii", data[:20]) == (0x1E3D4C54, 1, 3, 1, 1)
    assert data[20:] == struct.pack("<3i", 0, 4, 2)
    images = np.arange(2 * 2 * 3 * 3, dtype=np.uint8).reshape(2, 2, 3, 3)
    data = norb_bytes(images)
    assert struct.unpack("<6i", data[:24]) == (0x1E3D4C55, 4, 2, 2, 3, 3)
    np.testing.assert_array_equal(parse_norb(data), images)
    info = np.arange(8, dtype=np.int32).reshape(2, 4)
    assert struct.unpack("<5i", norb_bytes(info)[:20]) == (0x1E3D4C54, 2, 2, 4, 1)
    np.testing.assert_array_equal(parse_norb(norb_bytes(info)), info)


@pytest.mark.parametrize("data, phrase", [
    (b"\x00" * 4, "fewer than the 8-byte"),
    (struct.pack("<ii3i", 0x12345678, 1, 1, 1, 1), "not a NORB matrix"),
    (struct.pack("<ii3i", 0x1E3D4C55, 1, 5, 1, 1) + b"abc", "holds 3 data bytes"),
])
def test_norb_bad_files_are_refused(data, phrase):
    with pytest.raises(DataError, match=phrase):
        parse_norb(data, "x.mat")


@pytest.fixture
def norb_root(tmp_path, monkeypatch):
    root = tmp_path / "smallnorb"
    root.mkdir()
    monkeypatch.setattr(SmallNORB, "md5", write_smallnorb(root))
    return root


def test_smallnorb_reads_pairs_labels_and_info(norb_root):
    ds = SmallNORB(norb_root, "train")
    assert ds.images.shape == (10, 2, 96, 96) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64 and ds.info.shape == (10, 4)
    raw = parse_norb(gzip.decompress((norb_root / (SmallNORB.files["train"][0] + ".gz")).read_bytes()))
    assert torch.equal(ds.images, torch.from_numpy(raw))
    image, label = ds[3]
    assert image.shape == (2, 96, 96) and label == int(ds.labels[3])
    assert get_dataset("smallnorb") is SmallNORB


def test_smallnorb_checksum_and_missing_files(norb_root, monkeypatch, tmp_path):
    bad = dict(SmallNORB.md5)
    bad[SmallNORB.files["test"][0]] = "0" * 32
    monkeypatch.setattr(SmallNORB, "md5", bad)
    with pytest.raises(DataError, match="corrupt or a different version"):
        SmallNORB(norb_root, "test")
    with pytest.raises(DataError, match="not found"):
        SmallNORB(tmp_path / "empty", "train")


def test_smallnorb_download_verifies_before_renaming(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    md5 = write_smallnorb(mirror, gz=True)
    monkeypatch.setattr(SmallNORB, "mirrors", [mirror.as_uri() + "/"])
    monkeypatch.setattr(SmallNORB, "md5", md5)
    ds = SmallNORB(tmp_path / "data", "test", download=True)
    assert len(ds) == 10 and (tmp_path / "data" / (SmallNORB.files["test"][0] + ".gz")).is_file()
    wrong = dict(md5, **{SmallNORB.files["train"][1]: "f" * 32})
    monkeypatch.setattr(SmallNORB, "md5", wrong)
    with pytest.raises(DataError, match="decompressed MD5"):
        SmallNORB(tmp_path / "data2", "train", download=True)
    assert not (tmp_path / "data2" / (SmallNORB.files["train"][1] + ".gz")).exists()


# ------------------------------------------------------------------ CIFAR-10
def _md5_file(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_cifar10_download_extract_and_read(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    md5, arrays = write_cifar_archive(mirror / "cifar-10-python.tar.gz")
    monkeypatch.setattr(CIFAR10, "mirrors", [mirror.as_uri() + "/"])
    monkeypatch.setattr(CIFAR10, "md5", md5)
    monkeypatch.setattr("effcn.data.cifar10.ARCHIVE_MD5", _md5_file(mirror / "cifar-10-python.tar.gz"))
    train = CIFAR10(tmp_path / "data", "train", download=True)
    assert train.images.shape == (20, 3, 32, 32) and train.labels.shape == (20,)
    data, labels = arrays["data_batch_2"]
    # row layout: 1024 red, then green, then blue values, each 32x32 row-major
    assert torch.equal(train.images[4, 1], torch.from_numpy(data[0, 1024:2048].reshape(32, 32)))
    assert train.labels[4:8].tolist() == labels
    test = CIFAR10(tmp_path / "data", "test")  # found in data/cifar-10-batches-py
    assert len(test) == 4 and test.root.name == "cifar-10-batches-py"


def test_cifar10_refuses_a_wrong_archive_and_code_in_pickles(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    write_cifar_archive(mirror / "cifar-10-python.tar.gz")
    monkeypatch.setattr(CIFAR10, "mirrors", [mirror.as_uri() + "/"])
    with pytest.raises(DataError, match="MD5"):  # the real checksum does not match
        CIFAR10(tmp_path / "data", "train", download=True)
    assert not (tmp_path / "data" / "cifar-10-python.tar.gz").exists()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(DataError, match="not a CIFAR-10 python batch"):
        load_batch(pickle.dumps({b"data": Evil(), b"labels": []}), "evil")


@pytest.mark.parametrize("blob, phrase", [
    (cifar_batch(4, 0)[0][:300], "is not a CIFAR-10 python batch"),  # truncated
    (pickle.dumps({b"data": np.zeros((2, 3000), np.uint8), b"labels": [1, 2]}),
     r"holds data of shape \(2, 3000\)"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2, 3]}),
     r"and \(3,\) labels"),
    (pickle.dumps([1, 2]), "lacks the b'data' and b'labels' entries"),
])
def test_cifar10_bad_batches_are_refused(blob, phrase):
    with pytest.raises(DataError, match=phrase):
        load_batch(blob, "data_batch_1")


def test_cifar10_archive_with_outside_member_is_refused(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = mirror / "cifar-10-python.tar.gz"
    write_cifar_archive(archive, extra_member=("../escape.txt", b"x"))
    monkeypatch.setattr(CIFAR10, "mirrors", [mirror.as_uri() + "/"])
    monkeypatch.setattr("effcn.data.cifar10.ARCHIVE_MD5", _md5_file(archive))
    with pytest.raises(DataError, match="outside"):
        CIFAR10(tmp_path / "data", "train", download=True)
    assert not (tmp_path / "escape.txt").exists()


# ------------------------------------------------------------------ Fashion-MNIST
def test_fashion_mnist_is_looked_for_in_the_debian_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("EFFCN_DATA", raising=False)
    assert FashionMNIST.search_dirs(None)[-1] == FASHION_DIR
    assert FashionMNIST.search_dirs(tmp_path)[-1] == FASHION_DIR
    assert get_dataset("fashion_mnist") is FashionMNIST
    assert len(FashionMNIST.classes) == 10 and len(FashionMNIST.sha256) == 4


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_files_verify():
    train, test = FashionMNIST(split="train"), FashionMNIST(split="test")
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10


# ------------------------------------------------------------------ preprocessing
def test_standardize_and_smallnorb_eval_transform():
    x = torch.rand(3, 2, 96, 96) * torch.tensor([1.0, 0.3])[None, :, None, None]
    s = standardize(x)
    torch.testing.assert_close(s.mean(dim=(-2, -1)), torch.zeros(3, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(s.std(dim=(-2, -1), correction=0), torch.ones(3, 2))
    pre = SmallNORBPreprocess()
    out = pre.eval_transform(x)
    assert out.shape == (3, 2, 48, 48)
    torch.testing.assert_close(out, pre.prepare(x)[..., 8:56, 8:56])
    # half-pixel bilinear 96 -> 64 of a horizontal ramp stays a ramp with the right centre values
    ramp = torch.arange(96.0).expand(1, 2, 96, 96)
    resized = torch.nn.functional.interpolate(ramp, size=(64, 64), mode="bilinear",
                                              align_corners=False)
    torch.testing.assert_close(resized[0, 0, 0, 10], torch.tensor(10 * 1.5 + 0.25))


def test_smallnorb_training_crop_brightness_contrast():
    torch.manual_seed(0)
    x = torch.rand(16, 2, 96, 96)
    prepared = SmallNORBPreprocess().prepare(x)
    crops = SmallNORBPreprocess(max_delta=0.0, contrast=(1.0, 1.0))(x, torch.Generator().manual_seed(1))
    windows = prepared.unfold(2, 48, 1).unfold(3, 48, 1)  # (B, C, 17, 17, 48, 48)
    for b in range(16):
        match = (windows[b] - crops[b][:, None, None]).abs().amax(dim=(0, 3, 4)) < 1e-6
        assert match.any(), "every training crop is a 48x48 window of the resized image"
    bright = SmallNORBPreprocess(contrast=(1.0, 1.0))(x, torch.Generator().manual_seed(1))
    delta = bright - crops  # same generator: same crops, then + delta
    assert (delta.amax(dim=(1, 2, 3)) - delta.amin(dim=(1, 2, 3))).max() < 1e-4
    assert delta.abs().max() <= 2.0 and delta[:, 0, 0, 0].std() > 0.3
    full = SmallNORBPreprocess()(x, torch.Generator().manual_seed(1))
    ratio = full.std(dim=(-2, -1)) / bright.std(dim=(-2, -1))
    assert ((ratio > 0.5 - 1e-4) & (ratio < 1.5 + 1e-4)).all()
    torch.testing.assert_close(ratio[:, 0], ratio[:, 1])  # one factor per image
    again = SmallNORBPreprocess()(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(full, again)


def test_cifar_crop_with_padding_and_flip():
    x = torch.rand(40, 3, 32, 32)
    assert torch.equal(CIFARAugment(padding=0, flip_prob=0.0)(x), x)
    out = CIFARAugment()(x, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    windows = padded.unfold(2, 32, 1).unfold(3, 32, 1)  # (B, C, 9, 9, 32, 32)
    flipped = 0
    for b in range(40):
        plain = ((windows[b] - out[b][:, None, None]).abs().amax(dim=(0, 3, 4)) == 0).any()
        mirror = ((windows[b] - out[b].flip(-1)[:, None, None]).abs().amax(dim=(0, 3, 4)) == 0).any()
        assert plain or mirror
        flipped += int(mirror and not plain)
    assert 8 <= flipped <= 32  # p = 0.5: 20 expected, P(outside) < 1e-4
    t, l = torch.tensor([0, 3]), torch.tensor([2, 1])
    torch.testing.assert_close(crop_batch(x[:2], t, l, 5)[1], x[1, :, 3:8, 1:6])


# ------------------------------------------------------------------ trainer hook, end to end
def test_evaluation_applies_the_transform():
    model = __import__("effcn.models", fromlist=["create_model"]).create_model(
        "efficient_capsnet_smallnorb_tiny")
    images = torch.randint(0, 256, (4, 2, 96, 96), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3])
    config = Config()
    config.data.augment = "smallnorb"
    task = ClassificationTask(config)
    with pytest.raises(RuntimeError):
        evaluate(model, task, ImageSet(images, labels))  # 96x96 does not fit the 48x48 model
    pre = SmallNORBPreprocess()
    r = evaluate(model, task, ImageSet(images, labels, transform=pre.eval_transform),
                 predictions=True)
    with torch.no_grad():
        expected = model(pre.eval_transform(images.float() / 255)).lengths
    torch.testing.assert_close(r["lengths"], expected)


def test_smallnorb_training_eval_and_import_end_to_end(norb_root, tmp_path, capsys):
    sets = [f"data.root={norb_root}", "data.dataset=smallnorb", "data.augment=smallnorb",
            "data.val_size=4", "model.name=efficient_capsnet_smallnorb_tiny", "train.epochs=1",
            "train.batch_size=4", "train.eval_batch_size=8", "train.progress=false",
            f"run.dir={tmp_path / 'runs'}", "run.name=norb", "train.device=cpu"]
    summary = Trainer(load_config(None, sets), quiet=True).fit()
    assert summary["test_images"] == 10 and 0 <= summary["test_acc"] <= 1
    assert main(["eval", str(tmp_path / "runs" / "norb"), "--set", f"data.root={norb_root}"]) == 0
    assert "smallnorb test: accuracy" in capsys.readouterr().out
    # without the smallNORB preprocessing the 96x96 pairs do not fit the 48x48 model
    bad = load_config(None, sets[:2] + ["data.augment=none"] + sets[3:-2] + [f"run.dir={tmp_path}",
                                                                             "run.name=bad"])
    with pytest.raises(ConfigError, match="2x96x96 images but model"):
        Trainer(bad, quiet=True).fit()


def test_imported_keras_weights_evaluate_with_effcn_eval(norb_root, tmp_path, capsys):
    pytest.importorskip("h5py")
    h5 = tmp_path / "w.h5"
    write_keras_h5(h5)
    out = tmp_path / "imported"
    assert main(["import-keras", str(h5), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--set", f"data.root={norb_root}", "--set",
                 "data.val_size=2"]) == 0
    assert "smallnorb test: accuracy" in capsys.readouterr().out
    png = tmp_path / "x.png"
    png.write_bytes(b"")
    assert main(["predict", str(out), str(png)]) == 2
    assert "evaluation preprocessing" in capsys.readouterr().err


# ------------------------------------------------------------------ presets
def test_smallnorb_preset_has_the_authors_parameter_counts():
    from effcn.models import create_model
    from effcn.models import count_parameters
    from effcn.models.common import ConvDecoder
    model = create_model("efficient_capsnet_smallnorb")
    assert model.config.feature_map_size() == 8 and model.config.num_primary_caps() == 16
    assert count_parameters(model, include_decoder=False) == 151_664
    # the Keras generator: dense 80*64+64, convs 1->64, 64->128, 128->128, 128->2 (3x3)
    keras_generator = 80 * 64 + 64 + 9 * 64 + 64 + 9 * 64 * 128 + 128 + 9 * 128 * 128 + 128 + 9 * 128 * 2 + 2
    assert count_parameters(model) - 151_664 == keras_generator == 229_570
    out = model(torch.rand(2, 2, 48, 48), torch.tensor([0, 4]))
    assert out.reconstruction.shape == (2, 2, 48, 48) and out.lengths.shape == (2, 5)
    assert ConvDecoder(80, (8, 8, 8), (3, 32, 32)).seed == 6
    with pytest.raises(ValueError, match="cannot produce"):
        ConvDecoder(80, (8, 8, 8), (1, 28, 28))


def test_cifar10_training_end_to_end(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    md5 = {}
    for i, name in enumerate(CIFAR10.files["train"] + CIFAR10.files["test"]):
        blob = cifar_batch(6, i)[0]
        (root / name).write_bytes(blob)
        md5[name] = hashlib.md5(blob).hexdigest()
    mp = pytest.MonkeyPatch()
    mp.setattr(CIFAR10, "md5", md5)
    try:
        sets = [f"data.root={tmp_path}", "data.dataset=cifar10", "data.augment=cifar10",
                "data.val_size=6", "model.name=efficient_capsnet_cifar10", "train.epochs=1",
                "train.batch_size=8", "train.progress=false", f"run.dir={tmp_path / 'runs'}",
                "run.name=c", "train.device=cpu"]
        summary = Trainer(load_config(None, sets), quiet=True).fit()
    finally:
        mp.undo()
    assert summary["train_images"] == 24 and summary["test_images"] == 6
