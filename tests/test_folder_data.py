"""Your own images (effcn.data.folder): a folder of class sub-folders or an array file trains end
to end, split handling, bad files, `effcn train --data`, and the data.download default."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from effcn.data import ArrayFile, ImageFolder, MNIST
from effcn.data.folder import ImageOptions, fit_image, holdout
from effcn.errors import DataError
from effcn.models.pretrained import load_pretrained
from effcn.tools.publish import publish_run
from effcn.training.checkpoint import load_checkpoint
from effcn.training.config_io import load_config
from effcn.training.quickstart import config_for_data
from effcn.training.splits import load_dataset, load_test, load_train_val
from effcn.training.trainer import Trainer

from helpers import (effcn_in_process, folder_overrides, write_image_folder, write_tiny_mnist)
from test_image_files import write_bomb_png

CLASSES = ["left", "middle", "right"]  # write_image_folder's, sorted


def opts(**kw) -> ImageOptions:
    return ImageOptions(**{"image_size": 28, "channels": 3, **kw})


@pytest.fixture
def folder(tmp_path) -> Path:
    return write_image_folder(tmp_path / "photos", per_class=20)


def test_a_folder_trains_end_to_end_and_predict_names_its_classes(folder, tmp_path, capsys):
    config = load_config(None, folder_overrides(folder, tmp_path / "runs", epochs=4))
    summary = Trainer(config).fit()
    out = capsys.readouterr().out
    assert "primary capsules: 9x9 depthwise kernel for 28x28 input" in out
    assert "held out as the test split" in out and summary["data_notes"]
    run = tmp_path / "runs" / "folder"
    assert load_checkpoint(run / "checkpoints" / "best.pt")["class_names"] == CLASSES
    assert summary["test_acc"] > 0.5  # 3 classes: chance is 1/3
    files = sorted(folder.glob("*/*"))
    code, stdout, _ = effcn_in_process(["predict", str(run), *map(str, files), "--json"], capsys)
    assert code == 0
    predictions = [json.loads(line) for line in stdout.splitlines()]
    right = sum(p["name"] == Path(p["image"]).parent.name for p in predictions)
    assert len(predictions) == len(files) and {p["name"] for p in predictions} <= set(CLASSES)
    assert right / len(files) > 0.6, right
    published = publish_run(run, tmp_path / "pub").folder  # the class names reach the card
    assert load_pretrained(published).class_names == CLASSES
    assert "3: left, middle, right" in (published / "README.md").read_text()


def test_images_of_any_size_and_mode_become_uint8_of_the_configured_size(folder):
    ds = ImageFolder(folder, "train", options=opts(image_size=32, channels=1))
    assert ds.images.dtype == torch.uint8 and tuple(ds.images.shape[1:]) == (1, 32, 32)
    assert ds.classes == CLASSES
    a = np.full((10, 40), 200, np.uint8)
    padded = fit_image(a, 20, "pad")
    assert padded.shape == (20, 20) and padded[0].max() == 0 and padded[10].min() > 150
    assert fit_image(a, 20, "resize").min() > 150  # stretched: no border


def test_seeded_splits_are_deterministic_and_disjoint(folder):
    labels = np.repeat(np.arange(3), 20)
    a, b = holdout(labels, 0.25, seed=0), holdout(labels, 0.25, seed=0)
    assert (a == b).all() and not (a == holdout(labels, 0.25, seed=1)).all()
    assert [int(a[labels == c].sum()) for c in range(3)] == [5, 5, 5]  # stratified
    train = ImageFolder(folder, "train", options=opts(test_fraction=0.25))
    test = ImageFolder(folder, "test", options=opts(test_fraction=0.25))
    assert len(train) == 45 and len(test) == 15 and "held out" in train.notes[0]
    rows = {bytes(x.numpy()) for x in train.images}
    assert not rows & {bytes(x.numpy()) for x in test.images}
    assert not train.has_val_split


def test_train_val_test_folders_are_used_as_they_are(tmp_path):
    root = tmp_path / "split"
    for split, n in (("train", 12), ("val", 4), ("test", 5)):
        write_image_folder(root / split, per_class=n, seed=len(split))
    config = load_config(None, folder_overrides(root, tmp_path / "runs"))
    train, val = load_train_val(config, "cpu")
    assert (len(train), len(val), len(load_test(config, "cpu"))) == (36, 12, 15)
    assert train.notes == [] and val.class_names == CLASSES
    (root / "train").rename(root / "training")
    shutil.rmtree(root / "training")
    with pytest.raises(DataError, match="no train/ folder"):
        load_train_val(config, "cpu")


def _bad_files(folder: Path) -> list[Path]:
    good = folder / "left" / "000.png"
    cut = folder / "left" / "cut.png"
    cut.write_bytes(good.read_bytes()[:60])
    text = folder / "right" / "notes.png"
    text.write_text("not an image")
    floats = folder / "right" / "floats.tiff"  # a pixel format effcn does not guess the range of
    Image.new("F", (28, 28)).save(floats)
    return [cut, text, write_bomb_png(folder / "middle" / "bomb.png"), floats]


@pytest.mark.parametrize("which, words", [(0, "truncated or corrupt"),
                                          (1, "is not a readable image"),
                                          (2, "declares 1,600,000,000 pixels"),
                                          (3, "has pixel format F")])
def test_a_bad_file_is_refused_naming_it(folder, which, words):
    bad = _bad_files(folder)
    for other in bad[:which] + bad[which + 1:]:
        other.unlink()
    with pytest.raises(DataError) as e:
        ImageFolder(folder, "train", options=opts())
    message = str(e.value)
    assert str(bad[which]) in message and words in message and "data.skip_bad_files" in message
    assert "\n" not in message


def test_skip_bad_files_lists_what_was_skipped(folder, tmp_path, capsys):
    bad = _bad_files(folder)
    config = load_config(None, folder_overrides(folder, tmp_path / "runs", epochs=1)
                         + ["data.skip_bad_files=true"])
    summary = Trainer(config).fit()
    out = capsys.readouterr().out
    skipped = next(n for n in summary["data_notes"] if n.startswith("skipped 4"))
    assert all(str(p) in skipped and str(p) in out for p in bad)
    assert summary["train_images"] + 6 + len(load_test(config, "cpu")) == 60


def test_npz_and_npy_arrays(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (30, 20, 24, 3)).astype(np.float32)  # float in [0, 1], RGB
    y = np.arange(30) % 3
    np.savez(tmp_path / "a.npz", x_train=x, y_train=y, x_test=x[:6], y_test=y[:6],
             classes=np.array(["cat", "dog", "eel"]))
    ds = ArrayFile(tmp_path / "a.npz", "train", options=opts(channels=1, fit="pad"))
    assert ds.classes == ["cat", "dog", "eel"] and tuple(ds.images.shape) == (30, 1, 28, 28)
    assert len(ArrayFile(tmp_path / "a.npz", "test", options=opts())) == 6
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "images.npy", (x[..., 0] * 255).astype(np.uint8))
    np.save(tmp_path / "npy" / "labels.npy", y)
    train = ArrayFile(tmp_path / "npy", "train", options=opts())
    assert len(train) == 27 and train.classes == ["0", "1", "2"] and train.images.shape[1] == 3
    # channels 0 (auto): grey as image files are, one channel or three equal ones
    grey_rgb = np.repeat((x[..., :1] * 255).astype(np.uint8), 3, axis=3)
    np.savez(tmp_path / "grey_rgb.npz", images=grey_rgb, labels=y)
    auto = opts(channels=0)
    assert ArrayFile(tmp_path / "grey_rgb.npz", "train", options=auto).images.shape[1] == 1
    assert ArrayFile(tmp_path / "a.npz", "train", options=auto).images.shape[1] == 3
    np.savez(tmp_path / "objects.npz", images=np.array([x[0], None], dtype=object), labels=y[:2])
    with pytest.raises(DataError, match="pickled arrays"):
        ArrayFile(tmp_path / "objects.npz", "train", options=opts())
    np.savez(tmp_path / "wide.npz", images=x * 300, labels=y)
    with pytest.raises(DataError, match="outside 0-255"):
        ArrayFile(tmp_path / "wide.npz", "train", options=opts())


def test_an_npz_file_trains(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=x, labels=np.arange(40) % 3)
    config = load_config(None, folder_overrides(tmp_path / "d.npz", tmp_path / "runs", epochs=1,
                                                dataset="arrays"))
    summary = Trainer(config, quiet=True).fit()
    assert summary["dataset"] == "arrays" and 0.0 <= summary["test_acc"] <= 1.0


def test_train_data_picks_classes_channels_and_size(tmp_path):
    grey = write_image_folder(tmp_path / "grey", per_class=10, colour=False)
    config, lines = config_for_data(grey)
    assert config.data.dataset == "folder" and config.data.channels == 1
    # longer sides 20, 28, 40, 96, 47 (helpers.FOLDER_SIZES): the median is 40
    assert config.model.args == {"image_size": 40, "in_channels": 1, "num_classes": 3}
    assert config.data.augment == "none" and config.data.image_size == 40
    assert any(line.startswith("image size: 40x40 (median longer side 40") for line in lines)
    colour = write_image_folder(tmp_path / "colour", per_class=10, colour=True)
    config, lines = config_for_data(colour, image_size=64, epochs=3,
                                    overrides=["train.batch_size=4"])
    assert config.model.args["in_channels"] == 3 and config.data.image_size == 64
    assert config.data.augment == "cifar10" and config.train.epochs == 3
    assert config.train.batch_size == 4
    assert "27x27 depthwise kernel for 64x64 input" in lines[-2]
    np.savez(tmp_path / "d.npz", x_train=np.zeros((20, 36, 30), np.uint8),
             y_train=np.arange(20) % 4, x_test=np.zeros((4, 36, 30), np.uint8),
             y_test=np.arange(4))
    arrays, _ = config_for_data(tmp_path / "d.npz")
    assert arrays.data.dataset == "arrays" and arrays.model.args == {
        "image_size": 36, "in_channels": 1, "num_classes": 4}
    assert arrays.data.val_size == 2  # 10% of the 20 training images (the test split is given)
    # without a test split: 10% of what --set data.test_fraction leaves for training
    (tmp_path / "d.npz").unlink()
    np.savez(tmp_path / "d.npz", images=np.zeros((40, 28, 28), np.uint8), labels=np.arange(40) % 4)
    assert config_for_data(tmp_path / "d.npz")[0].data.val_size == 4  # 36 after the default 0.1
    half, _ = config_for_data(tmp_path / "d.npz", overrides=["data.test_fraction=0.5"])
    assert half.data.val_size == 2 and half.data.test_fraction == 0.5
    # the printed config is the config: the same fields through --set rebuild it
    sets = lines[-1].removeprefix("config: effcn train --set ").split(" --set ")
    assert load_config(None, sets) == config


def test_train_data_on_the_command_line(folder, tmp_path, capsys):
    code, out, err = effcn_in_process(
        ["train", "--data", str(folder), "--image-size", "28", "--epochs", "1", "--set",
         "model.name=efficient_capsnet_tiny", "--set", f"run.dir={tmp_path / 'runs'}", "--set",
         "train.progress=false", "--set", "train.batch_size=16"], capsys)
    assert code == 0, err
    assert "channels: 3 (the images are colour" in out and "3 classes: left, middle, right" in out
    saved = load_config(next((tmp_path / "runs").iterdir()) / "config.yaml")
    assert saved.data.dataset == "folder" and saved.model.args["num_classes"] == 3


def test_download_is_the_default_and_can_be_switched_off(tmp_path, monkeypatch):
    assert load_config(None).data.download is True
    calls = []

    def fake_download(cls, root=None, split="train"):
        calls.append(split)
        folder = Path(root)
        write_tiny_mnist(folder)
        return folder

    monkeypatch.setattr(MNIST, "download", classmethod(fake_download))
    monkeypatch.setattr(MNIST, "sha256", {})
    config = load_config(None, [f"data.root={tmp_path / 'mnist'}"])
    assert len(load_dataset(config, "test")) == 10 and calls == ["test"]
    off = load_config(None, [f"data.root={tmp_path / 'none'}", "data.download=false"])
    with pytest.raises(DataError, match="not found in"):
        load_dataset(off, "train")
    assert calls == ["test"]


def test_a_folder_without_class_folders_or_arrays_says_what_it_needs(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="holds no class sub-folders with image files"):
        config_for_data(tmp_path)


def test_empty_label_arrays_are_one_sentence(tmp_path):
    np.savez(tmp_path / "empty.npz", images=np.zeros((0, 8, 8), np.uint8),
             labels=np.zeros((0,), np.int64))
    with pytest.raises(DataError, match="holds no labels"):
        config_for_data(tmp_path / "empty.npz")
