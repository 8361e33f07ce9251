"""How to add a dataset, a model and a task (docs/architecture.md, "How to add ..."): each is
defined here, outside the package, registered with one line, and one short training and the
evaluation run them end to end through effcn.Trainer, as they run the built-in ones."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import effcn
from effcn.capsules import margin_loss
from effcn.data import DATASETS, register_dataset
from effcn.errors import DataError
from effcn.models import registry
from effcn.models.common import CapsNetOutput
from effcn.models.registry import register_model
from effcn.training.config_io import load_config
from effcn.training.metrics import read_metrics
from effcn.training.tasks import TASKS, register_task, task_for
from effcn.training.tasks.base import Batch, EvalSet, Task

from helpers import quick_overrides

SIZE = 12


# ------------------------------------------------------------------------------ a dataset
class Stripes:
    """A bright row in the top half (class 0) or the bottom half (class 1) on noise, SIZE x SIZE,
    read from ``stripes-<split>.npz`` (images uint8 (N, SIZE, SIZE), labels (N,)) in ``root``."""

    description = "toy stripes: a bright row in the top (0) or bottom (1) half (the docs' example)"
    splits = ("train", "test")
    classes = ("top", "bottom")

    def __init__(self, root=None, split: str = "train", download: bool = False):
        folder = self.locate(root, split)
        if folder is None:
            raise DataError(f"no stripes-{split}.npz in {root}; write it with write_stripes().")
        with np.load(folder / f"stripes-{split}.npz", allow_pickle=False) as f:
            self.images = torch.from_numpy(f["images"])
            self.labels = torch.from_numpy(f["labels"]).long()

    @classmethod
    def search_dirs(cls, root=None) -> list[Path]:
        return [Path(root)] if root is not None else []

    @classmethod
    def locate(cls, root=None, split: str = "train") -> Path | None:
        return next((d for d in cls.search_dirs(root) if (d / f"stripes-{split}.npz").is_file()),
                    None)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i][None], int(self.labels[i])


def write_stripes(root: Path, n_train: int = 160, n_test: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        images = (rng.random((n, SIZE, SIZE)) * 60).astype(np.uint8)
        labels = np.arange(n) % 2
        rows = rng.integers(0, SIZE // 2, n) + labels * (SIZE // 2)
        images[np.arange(n), rows, :] = 255
        np.savez(root / f"stripes-{split}.npz", images=images, labels=labels)
    return root


# -------------------------------------------------------------------------------- a model
@dataclass
class LinearConfig:
    """Everything needed to build the model (checkpoints store it)."""
    image_size: int = SIZE
    in_channels: int = 1
    num_classes: int = 2


class Linear(nn.Module):
    """One linear layer; ``lengths`` holds sigmoid class scores (B, num_classes)."""

    has_capsules = False

    def __init__(self, config: LinearConfig):
        super().__init__()
        self.config = c = config
        self.linear = nn.Linear(c.in_channels * c.image_size ** 2, c.num_classes)

    def forward(self, x, labels=None, return_routing: bool = False) -> CapsNetOutput:
        return CapsNetOutput(None, torch.sigmoid(self.linear(x.flatten(1))), None, None, None)


# --------------------------------------------------------------------------------- a task
class ImagesInOrder(EvalSet):
    def __init__(self, images, labels, name):
        self.images, self.labels, self.name = images, labels, name

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, start: int, stop: int) -> Batch:
        return Batch(self.images[start:stop].float() / 255, self.labels[start:stop])


class StripesTask(Task):
    """Top or bottom: the margin loss on the model's scores, each image flipped left to right at
    random (the task's own augmentation)."""

    name = "stripes"
    dataset = "stripes"  # the one dataset it trains on (config mistakes are one sentence)

    def setup(self, train, val) -> None:
        self.train_x, self.train_y = train.images, train.labels
        self._val = self.eval_set(val, "val")

    @property
    def num_train(self) -> int:
        return len(self.train_y)

    def train_batch(self, idx, generator) -> Batch:
        x = self.train_x[idx].float() / 255
        flip = torch.rand(len(idx), generator=generator, device=generator.device) < 0.5
        return Batch(torch.where(flip[:, None, None, None], x.flip(-1), x), self.train_y[idx])

    def loss(self, model, out, batch: Batch):
        margin = margin_loss(out.lengths, batch.y)
        return margin, margin, torch.zeros((), device=margin.device)

    def hits(self, out, batch: Batch) -> torch.Tensor:
        return (out.lengths.argmax(1) == batch.y).float()

    def val_set(self) -> EvalSet:
        return self._val

    def eval_set(self, split, name: str) -> EvalSet:
        return ImagesInOrder(split.images, split.labels, name)


# ---------------------------------------------------------------------- one line each
@pytest.fixture
def registered():
    """The three registry lines of the docs; the registries are restored afterwards."""
    register_dataset("stripes", Stripes)
    register_model("stripes_linear", Linear, LinearConfig, "toy: one linear layer")
    register_task(StripesTask)
    yield
    DATASETS.pop("stripes"), TASKS.pop("stripes")
    registry._REGISTRY.pop("stripes_linear")


def test_a_dataset_a_model_and_a_task_added_from_outside_train_and_evaluate(registered, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    write_stripes(root)
    overrides = [o for o in quick_overrides(root, tmp_path / "runs", epochs=1, name="stripes")
                 if not o.startswith(("data.dataset", "model.name"))]
    config = load_config(None, overrides + ["data.dataset=stripes", "model.name=stripes_linear",
                                            "task.name=stripes", "data.augment=none", "data.val_size=40",
                                            "train.batch_size=16", "optim.lr=0.05"])
    assert type(task_for(config)) is StripesTask
    summary = effcn.Trainer(config, quiet=True).fit()
    run = tmp_path / "runs" / "stripes"
    epoch, = read_metrics(run / "metrics.jsonl", kind="epoch")
    assert epoch["epoch"] == 1 and np.isfinite(epoch["train_loss"])
    assert epoch["val_acc"] > 0.9  # top against bottom: one epoch learns it
    report = effcn.evaluate_run(run, write=False)
    assert report["acc"] == pytest.approx(summary["test_acc"])
    assert report["images"] == 40


def test_a_name_is_registered_once(registered):
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("stripes", Stripes)
    with pytest.raises(ValueError, match="already registered"):
        register_task(StripesTask)
