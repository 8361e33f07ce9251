"""Few labels + self-supervision: classification in which only task.args.labeled training images
keep their labels, while every training image feeds the unsupervised terms.

    effcn train --config configs/mnist.yaml --set task.name=semi_supervised \\
        --set task.args.labeled=100 --set task.args.unlabeled_recon_weight=0.392 \\
        --set task.args.consistency_weight=1

It takes any dataset the classification task takes. The labeled images are a fixed,
class-balanced part of the training split, chosen after the validation split is carved out
(:func:`~effcn.training.splits.labeled_subset`). Validation and test are classification's.
Below, the fields are task.args' (batch_size and recon_weight: train's).

A training batch is one forward pass over rows of up to three kinds (:class:`Rows`), b being
the images the batch takes from the epoch's pass (train.batch_size, fewer in the last batch):

    labeled    labeled=N: round(L * b / train.batch_size) draws, at least one, with
               replacement from the N labeled images (L: labeled_batch_size, 0 meaning
               train.batch_size); labeled=0: the b images themselves, every one labeled
    unlabeled  the b images, their labels unused, when an unsupervised weight is non-zero
               (labeled=0: the labeled rows are these)
    second     a second augmentation of the b images, when consistency_weight > 0

An epoch is one pass over all training images, labeled or not: ceil(n / train.batch_size)
batches whatever the terms, so every image feeds the unsupervised terms once per epoch. Every
draw (the labeled picks, both augmentations) comes from the loop's batch generator, so a run
resumed from a checkpoint, even mid-epoch, continues exactly.

    loss = margin(labeled) + recon_weight * MSE(labeled, decoded from the true capsule)
         + unlabeled_recon_weight * MSE(unlabeled, decoded from the predicted capsule, or from
           all capsules with unlabeled_recon_mask=none)
         + consistency_weight * MSE(lengths or capsules of the unlabeled rows, of the second)

The consistency MSE is symmetric (both views carry gradients). ``margin`` and ``recon`` are the
supervised parts, as in classification, and ``acc`` is the accuracy on the labeled rows;
``unlabeled_recon`` and ``consistency`` are extra parts of the records. A zero weight adds
nothing and draws nothing: with labeled=0 and both weights 0 this task trains bit for bit as
classification does.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from ...capsules import ALL_CAPSULES, PREDICTED, reconstruction_loss
from ...errors import ConfigError
from ..splits import labeled_subset
from .base import Batch, check_fields, scaled_pixels
from .classification import ClassificationTask, classification_loss_parts


class Rows(NamedTuple):
    """Which rows of a training batch play which part (slices of the batch's rows)."""
    labeled: slice
    unlabeled: Optional[slice] = None
    second: Optional[slice] = None


def rows_of(values, part: slice, total: int):
    """``values`` (a tensor, or a forward result whose fields are (B, ...) tensors or None) cut
    to the rows ``part`` of ``total``; the object itself when ``part`` is every row."""
    if part == slice(0, total):
        return values
    if isinstance(values, torch.Tensor):
        return values[part]
    return type(values)(*(None if v is None else v[part] for v in values))


class SemiSupervisedTask(ClassificationTask):
    name = "semi_supervised"
    extra_parts = ("unlabeled_recon", "consistency")

    @dataclasses.dataclass
    class Args:
        labeled: int = 0                    # >0: only this many training images keep their
                                            # labels (class-balanced); 0: all do
        labeled_seed: int = 0               # fixes which training images keep their labels
        labeled_batch_size: int = 0         # labeled draws per batch (0: train.batch_size)
        unlabeled_recon_weight: float = 0.0  # MSE of the unlabeled images' reconstructions
        unlabeled_recon_mask: str = "predicted"  # predicted (the longest capsule) | none (all)
        consistency_weight: float = 0.0     # MSE between two augmentations' outputs of an image
        consistency_on: str = "lengths"     # lengths | capsules

        def __post_init__(self):
            check_fields(self, minimum={"labeled": 0, "labeled_batch_size": 0,
                                        "unlabeled_recon_weight": 0, "consistency_weight": 0},
                         choices={"unlabeled_recon_mask": ("predicted", "none"),
                                  "consistency_on": ("lengths", "capsules")})

    @classmethod
    def check_config(cls, config) -> None:
        a = cls.args_of(config)
        if a.unlabeled_recon_weight and not a.labeled:
            raise ConfigError("task.args.unlabeled_recon_weight needs unlabeled images but "
                              "task.args.labeled=0 keeps every label; set task.args.labeled=N "
                              "or task.args.unlabeled_recon_weight=0.")
        if a.labeled_batch_size and not a.labeled:
            raise ConfigError("task.args.labeled_batch_size applies only with task.args.labeled=N "
                              "(with 0 every image of a batch is labeled); set task.args.labeled "
                              "or drop it.")
        if a.consistency_weight and config.data.augment.strip().lower() == "none":
            raise ConfigError("task.args.consistency_weight compares two augmentations of each "
                              "image but data.augment=none makes them identical; choose an "
                              "augmentation (e.g. data.augment=paper) or set "
                              "task.args.consistency_weight=0.")

    def setup(self, train, val) -> None:
        super().setup(train, val)
        a = self.args
        self.labeled = (labeled_subset(train.labels, a.labeled, self.num_classes, a.labeled_seed)
                        if a.labeled else None)

    def check_model(self, model) -> None:
        """The classification checks; the unsupervised terms need capsules (and the
        reconstruction of unlabeled images a decoder)."""
        super().check_model(model)
        a, name = self.args, model.model_name
        if (a.unlabeled_recon_weight or a.consistency_weight) and \
                not getattr(model, "has_capsules", True):
            raise ConfigError(f"model {name} has no capsules, so task.args.unlabeled_recon_weight "
                              f"and task.args.consistency_weight cannot apply; set both to 0 "
                              f"(task.args.labeled alone trains it on the labeled images) or use "
                              f"a capsule model.")
        if a.unlabeled_recon_weight and getattr(model, "decoder", None) is None:
            raise ConfigError(f"task.args.unlabeled_recon_weight needs a decoder but model {name} "
                              f"has none; drop model.args.decoder=none or set "
                              f"task.args.unlabeled_recon_weight=0.")
        if (a.unlabeled_recon_weight and a.unlabeled_recon_mask == "none"
                and getattr(getattr(model, "config", None), "decoder_conditioning",
                            "masked") == "embedding"):
            raise ConfigError(f"task.args.unlabeled_recon_mask=none decodes all capsules at once, "
                              f"but model {name}'s decoder reads one capsule and its class "
                              f"(decoder_conditioning=embedding); set "
                              f"task.args.unlabeled_recon_mask=predicted or "
                              f"model.args.decoder_conditioning=masked.")

    # ------------------------------------------------------------- batches
    def _views(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augmented float images of training indices ``idx`` (one draw per row)."""
        return self.augment(scaled_pixels(self.train_x[idx], self.config.data.pixel_divisor),
                            generator=generator)

    def train_batch(self, idx, generator) -> Batch:
        a, b = self.args, len(idx)
        unsupervised, second = bool(a.unlabeled_recon_weight or a.consistency_weight), \
            bool(a.consistency_weight)
        if self.labeled is None:  # every image labeled: classification's batch (+ second views)
            batch = super().train_batch(idx, generator)
            every = slice(0, b)
            if not second:
                return batch._replace(rows=Rows(every, every if unsupervised else None))
            y = torch.cat([batch.y, batch.y.new_full((b,), PREDICTED)])
            return Batch(torch.cat([batch.x, self._views(idx, generator)]), y,
                         rows=Rows(every, every, slice(b, 2 * b)))
        batch_size = self.config.train.batch_size
        n = max(1, round((a.labeled_batch_size or batch_size) * b / batch_size))
        picks = self.labeled[torch.randint(len(self.labeled), (n,), generator=generator,
                                           device=generator.device)]
        parts, labels = [picks], [self.train_y[picks]]
        mask = PREDICTED if a.unlabeled_recon_mask == "predicted" else ALL_CAPSULES
        if unsupervised:
            parts.append(idx)
            labels.append(idx.new_full((b,), mask))
        if second:
            parts.append(idx)
            labels.append(idx.new_full((b,), PREDICTED))  # decoded, never compared
        rows = Rows(slice(0, n), slice(n, n + b) if unsupervised else None,
                    slice(n + b, n + 2 * b) if second else None)
        return Batch(self._views(torch.cat(parts), generator), torch.cat(labels), rows=rows)

    # ------------------------------------------------------ loss and metric
    def loss(self, model, out, batch: Batch):
        a, rows = self.args, batch.rows
        zero = out.lengths.new_zeros(())
        if rows is None:  # an evaluation batch: every image labeled
            return (*super().loss(model, out, batch), zero, zero)
        n, lab = len(batch.x), rows.labeled
        total, margin, recon = classification_loss_parts(
            model, rows_of(out, lab, n), rows_of(batch.x, lab, n), rows_of(batch.y, lab, n),
            self.config.train.recon_weight)
        unlabeled_recon = consistency = zero
        if a.unlabeled_recon_weight:
            u = rows.unlabeled
            unlabeled_recon = reconstruction_loss(out.reconstruction[u], batch.x[u])
            total = total + a.unlabeled_recon_weight * unlabeled_recon
        if a.consistency_weight:
            values = out.lengths if a.consistency_on == "lengths" else out.capsules
            consistency = F.mse_loss(values[rows.unlabeled].float(), values[rows.second].float())
            total = total + a.consistency_weight * consistency
        return total, margin, recon, unlabeled_recon, consistency

    def hits(self, out, batch: Batch) -> torch.Tensor:
        """Hits on the labeled rows (an evaluation batch: every row)."""
        if batch.rows is None:
            return super().hits(out, batch)
        n, lab = len(batch.x), batch.rows.labeled
        return (rows_of(out.lengths, lab, n).argmax(1) == rows_of(batch.y, lab, n)).float()
