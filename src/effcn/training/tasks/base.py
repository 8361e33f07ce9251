"""The base of every task: the Batch a model sees, an evaluation set, the Task interface."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple, Optional

import torch


class Batch(NamedTuple):
    """One batch as the model and the loss see it.

    x (B, C, H, W) float model input; y (B,) or (B, K) int64 labels (they also mask the decoder
    in training); target: what the reconstruction is compared with, None for x itself
    (MultiMNIST: the K shifted digits, (B, K, C, H, W)); rows: which rows play which part, for
    a task whose batches mix kinds of rows (semi-supervised: labeled, unlabeled, second views),
    None for a plain batch.
    """
    x: torch.Tensor
    y: torch.Tensor
    target: Optional[torch.Tensor] = None
    rows: Optional[Any] = None


def scaled_pixels(images: torch.Tensor, divisor: float) -> torch.Tensor:
    """float32 ``images.float() / divisor``, not in place; integer pixels (uint8) in one kernel
    (the division converts them), so a batch spends no separate cast."""
    return images.float().div(divisor) if images.is_floating_point() else images.div(divisor)


class EvalSet:
    """A fixed evaluation set: ``len()`` items, composed ``batch(start, stop)`` at a time."""

    name: str = "eval"

    def __len__(self) -> int:
        raise NotImplementedError

    def batch(self, start: int, stop: int) -> Batch:
        raise NotImplementedError

    def describe(self) -> dict:
        """Facts about the set for reports (e.g. how MultiMNIST pairs were drawn)."""
        return {"images": len(self)}


class Task:
    """The base of every task; see the module docstring."""

    name = "task"
    metric = "accuracy"             # what `acc` means in records and reports
    split_items = "images"          # what the train / val splits hold (MultiMNIST: digits)
    set_items = "images"            # what an evaluation set holds (MultiMNIST: pairs)
    extra_parts: tuple = ()         # names of the loss parts ``loss`` returns after the three
    dataset: str = ""               # the dataset the task needs ("": any dataset no task claims)

    @dataclasses.dataclass
    class Args:
        """The task's own settings (``task.args``); a task that has some declares its own Args,
        whose ``__post_init__`` raises ValueError for an out-of-range value."""

    def __init__(self, config):
        self.config = config
        self.args = self.args_of(config)

    @classmethod
    def args_of(cls, config) -> "Task.Args":
        """The task's Args of a config (``config.task.args``, checked when it was loaded)."""
        return cls.Args(**config.task.args)

    @classmethod
    def check_config(cls, config) -> None:
        """Refuse settings the task cannot use (called when a config is validated)."""

    # ------------------------------------------------------------- training
    def setup(self, train, val) -> None:
        """Keep what the task needs of the training and validation splits (training/splits.py)."""
        raise NotImplementedError

    def check_model(self, model) -> None:
        """A clear ConfigError when ``model`` cannot be trained on this task's data."""

    @property
    def num_train(self) -> int:
        """Training items (images, or MultiMNIST's digits)."""
        raise NotImplementedError

    @property
    def epoch_size(self) -> int:
        """Items one epoch trains on (default: one pass over the training items)."""
        return self.num_train

    def epoch_order(self, generator: torch.Generator) -> torch.Tensor:
        """The item indices of one epoch, ``epoch_size`` of them, in training order."""
        return torch.randperm(self.num_train, generator=generator, device=generator.device)

    def train_batch(self, idx: torch.Tensor, generator: torch.Generator) -> Batch:
        """The training batch of item indices ``idx`` (augmented / composed with ``generator``)."""
        raise NotImplementedError

    # ------------------------------------------------------ loss and metric
    def loss(self, model, out, batch: Batch):
        """(total, margin, recon) scalar losses of a forward result ``out`` on ``batch``, followed
        by one scalar per name of ``extra_parts`` (the loop records them as batch metrics under
        those names and as ``train_<name>`` in the epoch records; evaluation reads the three)."""
        raise NotImplementedError

    def hits(self, out, batch: Batch) -> torch.Tensor:
        """Per-label hits, shaped like ``batch.y``: 1 where a true label was found."""
        raise NotImplementedError

    def model_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images of a split as the model takes single images (MultiMNIST: padded)."""
        return images

    def figure_images(self, split) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images (N, C, H, W) as the model takes them, labels (N,)) of a split, for
        figures: its model_images and labels (MNIST numbers: its fixed composed numbers)."""
        return self.model_images(split.images), split.labels

    def class_names(self, split) -> list:
        """The names of the model's classes (MNIST numbers: "00" to "99", not the digits')."""
        return list(split.class_names)

    def decoder_labels(self, batch: Batch, training: bool):
        """Labels that mask the decoder: the true ones in training; at evaluation None (the
        prediction) unless the task says otherwise."""
        return batch.y if training else None

    # ------------------------------------------------------------ evaluation
    def val_set(self) -> EvalSet:
        """The validation set built in ``setup`` (fixed for the whole run)."""
        raise NotImplementedError

    def eval_set(self, split, name: str) -> EvalSet:
        """An evaluation set of a :class:`~effcn.training.splits.Split` (``name``: test, val)."""
        raise NotImplementedError

    # ------------------------------------------------------ evaluation reports
    def describe_eval_set(self, eval_set: EvalSet) -> str:
        """What an evaluation set holds, for a report's first line, e.g. "80 images"."""
        return f"{len(eval_set)} {self.set_items}"

    def eval_figures(self, model, eval_set: EvalSet, out_dir: Path) -> list[Path]:
        """Write the task's own figures of an evaluation into ``out_dir``; returns their paths
        (none by default). A figure that cannot be drawn raises EffcnError."""
        return []


def check_fields(args, minimum: Optional[dict] = None, choices: Optional[dict] = None) -> None:
    """A ValueError naming the first field of ``args`` (an Args dataclass) below its minimum or
    not one of its choices: the range checks of an Args' ``__post_init__``."""
    for name, low in (minimum or {}).items():
        if getattr(args, name) < low:
            raise ValueError(f"{name} must be at least {low}, got {getattr(args, name)!r}")
    for name, allowed in (choices or {}).items():
        if getattr(args, name) not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}, got "
                             f"{getattr(args, name)!r}")
