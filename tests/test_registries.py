"""Every registered thing runs (timm's way): each model forward and backward, each task's batch,
loss and metric, each dataset on small files in its real format (augmentations: test_transforms.py). A new entry
in a registry is tested here without a line of test code, except a dataset's file writer."""

from __future__ import annotations

import tarfile
import time

import numpy as np
import pytest
import torch

from effcn.data import DATASETS, MNIST
from effcn.models import create_model, input_shape, list_models
from effcn.training.config_io import load_config
from effcn.training.splits import load_train_val
from effcn.training.tasks import TASKS, task_for

from helpers import (asymmetric_images, task_overrides, write_affnist_mat, write_cifar_archive,
                     write_image_folder, write_smallnorb, write_synthetic_idx, write_tiny_mnist)

SECONDS = 60  # per test: generous for 2 shared CPU cores, far below a hang


# ------------------------------------------------------------------------------- models
def forward(name: str, **kwargs):
    """(model, input (3, C, H, W), output) of a registered model in training mode, labels 0-2."""
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.rand(3, *input_shape(model.config))
    return model, x, model(x, torch.tensor([0, 1, 2]), **kwargs)


@pytest.mark.parametrize("name", list_models())
def test_model_forward(name, time_limit):
    """Shapes, no NaN, capsule lengths in [0, 1], reconstructions in [0, 1], routing coefficients
    summing to one over the classes; the baseline CNN has class scores only."""
    time_limit(SECONDS)
    model, x, out = forward(name, return_routing=True)
    cfg = model.config
    assert out.lengths.shape == (3, cfg.num_classes)
    assert all(t is None or torch.isfinite(t).all() for t in out)
    if not model.has_capsules:
        assert out.capsules is None and out.reconstruction is None and out.routing is None
        return
    assert out.capsules.shape == (3, cfg.num_classes, cfg.caps_dim)
    assert ((out.lengths >= 0) & (out.lengths <= 1 + 1e-6)).all()
    assert out.reconstruction.shape == x.shape
    assert ((out.reconstruction >= 0) & (out.reconstruction <= 1)).all()
    assert torch.allclose(out.routing.sum(dim=1), torch.ones(3, out.routing.shape[2]), atol=1e-5)
    model.eval()
    with torch.no_grad():
        plain = model(x)
    assert plain.routing is None and plain.reconstruction.shape == x.shape


@pytest.mark.parametrize("name", list_models())
def test_model_backward(name, time_limit):
    time_limit(SECONDS)
    model, _, out = forward(name)
    loss = out.lengths.sum() + (0 if out.reconstruction is None else out.reconstruction.mean())
    loss.backward()
    for param_name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), param_name


def test_the_time_limit_stops_a_test_that_runs_too_long(time_limit):
    time_limit(0.2)
    with pytest.raises(pytest.fail.Exception, match="limit of 0.2 s"):
        time.sleep(5)


# -------------------------------------------------------------------------------- tasks
@pytest.fixture
def synthetic_files_not_mnist(monkeypatch):
    """The synthetic digits are not MNIST's files: no checksum for the MNIST-based datasets."""
    for name in ("mnist", "multimnist", "mnist_numbers"):
        monkeypatch.setattr(DATASETS[name], "sha256", {})


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_batch_loss_and_metric(name, synthetic_root, tmp_path, synthetic_files_not_mnist,
                                    time_limit):
    """A training batch of each task through a model, its loss parts and backward, its hits;
    then a batch of its validation set."""
    time_limit(SECONDS)
    config = load_config(None, task_overrides(name, synthetic_root, tmp_path))
    task = task_for(config)
    assert type(task) is TASKS[name]
    train, val = load_train_val(config, torch.device("cpu"))
    task.setup(train, val)
    torch.manual_seed(0)
    model = create_model(config.model.name, **config.model.args)
    task.check_model(model)
    g = torch.Generator().manual_seed(0)
    order = task.epoch_order(g)
    assert len(order) == task.epoch_size and int(order.max()) < task.num_train
    batch = task.train_batch(order[:8], g)
    assert batch.x.dtype == torch.float32 and batch.x.shape[1:] == input_shape(model.config)
    out = model(batch.x, task.decoder_labels(batch, training=True))
    parts = task.loss(model, out, batch)
    assert len(parts) == 3 + len(task.extra_parts)
    assert all(p.dim() == 0 and torch.isfinite(p) for p in parts)
    parts[0].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    hits = task.hits(out, batch)
    assert ((hits == 0) | (hits == 1)).all()
    model.eval()
    held_out = task.val_set().batch(0, 4)
    with torch.no_grad():
        out = model(held_out.x, task.decoder_labels(held_out, training=False))
    assert task.hits(out, held_out).shape == held_out.y.shape


# ----------------------------------------------------------------------------- datasets
def mnist_files(root, monkeypatch, cls):
    monkeypatch.setattr(cls, "sha256", write_tiny_mnist(root))


def smallnorb_files(root, monkeypatch, cls):
    monkeypatch.setattr(cls, "md5", write_smallnorb(root, n=4))


def cifar10_files(root, monkeypatch, cls):
    archive = root / "cifar-10-python.tar.gz"
    md5, _ = write_cifar_archive(archive)
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    monkeypatch.setattr(cls, "md5", md5)


def affnist_files(root, monkeypatch, cls):
    write_affnist_mat(root / "test.mat", asymmetric_images(4), np.arange(4))
    (root / "training_and_validation_batches").mkdir()
    for i in range(1, 33):
        write_affnist_mat(root / "training_and_validation_batches" / f"{i}.mat",
                          asymmetric_images(1, seed=i), np.array([i % 10]))
    monkeypatch.setattr(cls, "images_per_file", {"test": 4, "train": 1})


def synthetic_digit_files(root, monkeypatch, cls):
    """MNIST's file names, synthetic digits (no MNIST checksum: they are not MNIST's)."""
    write_synthetic_idx(root, n_train=40, n_test=20)
    for reader in {cls, MNIST}:  # affnist_style reads through MNIST
        if hasattr(reader, "sha256"):
            monkeypatch.setattr(reader, "sha256", {})


def image_folder_files(root, monkeypatch, cls):
    write_image_folder(root, per_class=4)


def array_files(root, monkeypatch, cls):
    """A folder of .npy files (ArrayFile reads it as it reads a .npz)."""
    rng = np.random.default_rng(0)
    np.save(root / "images.npy", rng.integers(0, 256, (12, 20, 24), dtype=np.uint8))
    np.save(root / "labels.npy", np.arange(12) % 3)


# name -> writer(root, monkeypatch, dataset class) of small files in the dataset's real format
WRITERS = {"mnist": mnist_files, "fashion_mnist": mnist_files, "idx": synthetic_digit_files,
           "smallnorb": smallnorb_files, "cifar10": cifar10_files, "affnist": affnist_files,
           "mnist40": synthetic_digit_files, "affnist_style": synthetic_digit_files,
           "multimnist": synthetic_digit_files, "mnist_numbers": synthetic_digit_files,
           "folder": image_folder_files, "arrays": array_files}


def test_every_registered_dataset_has_a_file_writer():
    assert sorted(WRITERS) == sorted(DATASETS), "add a writer of small files to WRITERS"


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_reads_its_files(name, tmp_path, monkeypatch, time_limit):
    time_limit(SECONDS)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # generated sets cache there
    cls, root = DATASETS[name], tmp_path / "data"
    root.mkdir()
    WRITERS[name](root, monkeypatch, cls)
    assert cls.description.strip()
    for split in getattr(cls, "splits", None) or tuple(cls.files):
        assert cls.locate(root, split) is not None, split
        ds = cls(root, split)
        assert ds.images.dtype == torch.uint8 and len(ds.images) == len(ds.labels) > 0
        if hasattr(type(ds), "__getitem__"):
            image, label = ds[0]
            assert image.dtype == torch.uint8 and image.dim() == 3 and isinstance(int(label), int)

# Augmentations: tests/test_transforms.py runs every registered one.
