"""Classification: one label per image, margin loss (or the model's own loss) + reconstruction.

Training images are augmented per batch on the device (data.augment); evaluation images go
through the augmentation's evaluation preprocessing only (e.g. smallNORB's standardisation and
centre crop). The metric is top-1 accuracy of the capsule lengths (the CNN: of its scores).
"""

from __future__ import annotations

import torch

from ...capsules import margin_loss, reconstruction_loss
from ...errors import ConfigError
from .base import Batch, EvalSet, Task, scaled_pixels


def eval_transform_of(augment):
    """The evaluation-time preprocessing of a training augmentation: its ``eval_transform``
    method, or None (identity)."""
    return getattr(augment, "eval_transform", None)


def classification_loss_parts(model, out, images: torch.Tensor, labels: torch.Tensor,
                              recon_weight: float):
    """(total, margin, reconstruction) of a forward result on float images (B, C, H, W).

    A model with a ``classification_loss(out, labels)`` method (the baseline CNN: cross-entropy)
    supplies the classification part in place of the margin loss; it is still reported as
    'margin' so every run's metrics have the same keys.
    """
    own = getattr(model, "classification_loss", None)
    margin = own(out, labels) if own is not None else margin_loss(out.lengths, labels)
    if out.reconstruction is None:
        recon = torch.zeros((), device=margin.device)
    else:
        recon = reconstruction_loss(out.reconstruction, images)
    return margin + recon_weight * recon, margin, recon


class ImageSet(EvalSet):
    """uint8 images (N, C, H, W) and labels (N,), converted to floats per batch (divided by
    ``divisor``: 255 maps to 1, the authors' MNIST uses 256) and passed through ``transform``
    (the evaluation preprocessing) when given."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, name: str = "eval",
                 transform=None, divisor: float = 255.0):
        self.images, self.labels, self.name, self.transform = images, labels, name, transform
        self.divisor = divisor

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, start: int, stop: int) -> Batch:
        x = scaled_pixels(self.images[start:stop], self.divisor)
        if self.transform is not None:
            x = self.transform(x)
        return Batch(x, self.labels[start:stop])


class ClassificationTask(Task):
    name = "classification"
    metric = "accuracy"

    def __init__(self, config):
        super().__init__(config)
        from ...data.transforms import build_augment
        self.augment = build_augment(config.data.augment)
        self.transform = eval_transform_of(self.augment)

    def setup(self, train, val) -> None:
        self.train_x, self.train_y = train.images, train.labels
        self.num_classes = int(torch.cat([train.labels, val.labels]).max()) + 1
        self._val = self.eval_set(val, "val")

    @property
    def num_train(self) -> int:
        return len(self.train_y)

    def check_model(self, model) -> None:
        """The model must take the (preprocessed) images and cover every class."""
        cfg, dataset = model.config, self.config.data.dataset
        x = self.train_x[:1].float() / 255
        _, c, h, w = (self.transform(x) if self.transform is not None else x).shape
        if (c, h, w) != (cfg.in_channels, cfg.image_size, cfg.image_size):
            raise ConfigError(f"dataset {dataset} has {c}x{h}x{w} images but model "
                              f"{model.model_name} expects {cfg.in_channels}x{cfg.image_size}x"
                              f"{cfg.image_size}; choose a model preset for this dataset.")
        if self.num_classes > cfg.num_classes:
            raise ConfigError(f"dataset {dataset} has labels up to {self.num_classes - 1} but "
                              f"model {model.model_name} has {cfg.num_classes} classes; set "
                              f"model.args.num_classes.")

    def train_batch(self, idx, generator) -> Batch:
        return Batch(self.augment(scaled_pixels(self.train_x[idx], self.config.data.pixel_divisor),
                                  generator=generator), self.train_y[idx])

    def loss(self, model, out, batch: Batch):
        return classification_loss_parts(model, out, batch.x, batch.y,
                                         self.config.train.recon_weight)

    def hits(self, out, batch: Batch) -> torch.Tensor:
        return (out.lengths.argmax(1) == batch.y).float()

    def val_set(self) -> EvalSet:
        return self._val

    def eval_set(self, split, name: str) -> EvalSet:
        return ImageSet(split.images, split.labels, name, self.transform,
                        self.config.data.pixel_divisor)
