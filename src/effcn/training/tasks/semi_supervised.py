"""Few labels + self-supervision: classification in which only data.labeled training images keep
their labels, while every training image feeds the unsupervised terms.

    effcn train --config configs/mnist.yaml --set data.labeled=100 \\
        --set train.unlabeled_recon_weight=0.392 --set train.consistency_weight=1

``task_for`` picks this task when data.labeled, train.unlabeled_recon_weight or
train.consistency_weight is non-zero (on a classification dataset). The labeled images are a
fixed, class-balanced part of the training split, chosen after the validation split is carved
out (:func:`~effcn.training.splits.labeled_subset`). Validation and test are classification's.

A training batch is one forward pass over rows of up to three kinds (:class:`Rows`), b being
the images the batch takes from the epoch's pass (train.batch_size, fewer in the last batch):

    labeled    data.labeled=N: round(L * b / train.batch_size) draws, at least one, with
               replacement from the N labeled images (L: train.labeled_batch_size, 0 meaning
               train.batch_size); data.labeled=0: the b images themselves, every one labeled
    unlabeled  the b images, their labels unused, when an unsupervised weight is non-zero
               (data.labeled=0: the labeled rows are these)
    second     a second augmentation of the b images, when train.consistency_weight > 0

An epoch is one pass over all training images, labeled or not: ceil(n / train.batch_size)
batches whatever the terms, so every image feeds the unsupervised terms once per epoch. Every
draw (the labeled picks, both augmentations) comes from the loop's batch generator, so a run
resumed from a checkpoint, even mid-epoch, continues exactly.

    loss = margin(labeled) + recon_weight * MSE(labeled, decoded from the true capsule)
         + unlabeled_recon_weight * MSE(unlabeled, decoded from the predicted capsule, or from
           all capsules with train.unlabeled_recon_mask=none)
         + consistency_weight * MSE(lengths or capsules of the unlabeled rows, of the second)

The consistency MSE is symmetric (both views carry gradients). ``margin`` and ``recon`` are the
supervised parts, as in classification, and ``acc`` is the accuracy on the labeled rows;
``unlabeled_recon`` and ``consistency`` are extra parts of the records. A zero weight adds
nothing and draws nothing: with data.labeled=0 and both weights 0 this task trains bit for bit
as classification does.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from ...capsules import ALL_CAPSULES, PREDICTED, reconstruction_loss
from ...errors import ConfigError
from ..splits import labeled_subset
from .base import Batch
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

    @staticmethod
    def check_config(config) -> None:
        d, t = config.data, config.train
        if t.unlabeled_recon_weight and not d.labeled:
            raise ConfigError("train.unlabeled_recon_weight needs unlabeled images but "
                              "data.labeled=0 keeps every label; set data.labeled=N or "
                              "train.unlabeled_recon_weight=0.")
        if t.labeled_batch_size and not d.labeled:
            raise ConfigError("train.labeled_batch_size applies only with data.labeled=N (with 0 "
                              "every image of a batch is labeled); set data.labeled or drop it.")
        if t.consistency_weight and d.augment.strip().lower() == "none":
            raise ConfigError("train.consistency_weight compares two augmentations of each image "
                              "but data.augment=none makes them identical; choose an "
                              "augmentation (e.g. data.augment=paper) or set "
                              "train.consistency_weight=0.")

    def setup(self, train, val) -> None:
        super().setup(train, val)
        d = self.config.data
        self.labeled = (labeled_subset(train.labels, d.labeled, self.num_classes, d.labeled_seed)
                        if d.labeled else None)

    def check_model(self, model) -> None:
        """The classification checks; the unsupervised terms need capsules (and the
        reconstruction of unlabeled images a decoder)."""
        super().check_model(model)
        t, name = self.config.train, model.model_name
        if (t.unlabeled_recon_weight or t.consistency_weight) and \
                not getattr(model, "has_capsules", True):
            raise ConfigError(f"model {name} has no capsules, so train.unlabeled_recon_weight and "
                              f"train.consistency_weight cannot apply; set both to 0 (data.labeled "
                              f"alone trains it on the labeled images) or use a capsule model.")
        if t.unlabeled_recon_weight and getattr(model, "decoder", None) is None:
            raise ConfigError(f"train.unlabeled_recon_weight needs a decoder but model {name} has "
                              f"none; drop model.args.decoder=none or set "
                              f"train.unlabeled_recon_weight=0.")
        if (t.unlabeled_recon_weight and t.unlabeled_recon_mask == "none"
                and getattr(getattr(model, "config", None), "decoder_conditioning",
                            "masked") == "embedding"):
            raise ConfigError(f"train.unlabeled_recon_mask=none decodes all capsules at once, but "
                              f"model {name}'s decoder reads one capsule and its class "
                              f"(decoder_conditioning=embedding); set "
                              f"train.unlabeled_recon_mask=predicted or "
                              f"model.args.decoder_conditioning=masked.")

    # ------------------------------------------------------------- batches
    def _views(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augmented float images of training indices ``idx`` (one draw per row)."""
        return self.augment(self.train_x[idx].float().div_(self.config.data.pixel_divisor),
                            generator=generator)

    def train_batch(self, idx, generator) -> Batch:
        t, b = self.config.train, len(idx)
        unsupervised, second = bool(t.unlabeled_recon_weight or t.consistency_weight), \
            bool(t.consistency_weight)
        if self.labeled is None:  # every image labeled: classification's batch (+ second views)
            batch = super().train_batch(idx, generator)
            every = slice(0, b)
            if not second:
                return batch._replace(rows=Rows(every, every if unsupervised else None))
            y = torch.cat([batch.y, batch.y.new_full((b,), PREDICTED)])
            return Batch(torch.cat([batch.x, self._views(idx, generator)]), y,
                         rows=Rows(every, every, slice(b, 2 * b)))
        per_batch = t.labeled_batch_size or t.batch_size
        n = max(1, round(per_batch * b / t.batch_size))
        picks = self.labeled[torch.randint(len(self.labeled), (n,), generator=generator,
                                           device=generator.device)]
        parts, labels = [picks], [self.train_y[picks]]
        mask = PREDICTED if t.unlabeled_recon_mask == "predicted" else ALL_CAPSULES
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
        t, rows = self.config.train, batch.rows
        zero = out.lengths.new_zeros(())
        if rows is None:  # an evaluation batch: every image labeled
            return (*super().loss(model, out, batch), zero, zero)
        n, lab = len(batch.x), rows.labeled
        total, margin, recon = classification_loss_parts(
            model, rows_of(out, lab, n), rows_of(batch.x, lab, n), rows_of(batch.y, lab, n),
            t.recon_weight)
        unlabeled_recon = consistency = zero
        if t.unlabeled_recon_weight:
            u = rows.unlabeled
            unlabeled_recon = reconstruction_loss(out.reconstruction[u], batch.x[u])
            total = total + t.unlabeled_recon_weight * unlabeled_recon
        if t.consistency_weight:
            values = out.lengths if t.consistency_on == "lengths" else out.capsules
            consistency = F.mse_loss(values[rows.unlabeled].float(), values[rows.second].float())
            total = total + t.consistency_weight * consistency
        return total, margin, recon, unlabeled_recon, consistency

    def hits(self, out, batch: Batch) -> torch.Tensor:
        """Hits on the labeled rows (an evaluation batch: every row)."""
        if batch.rows is None:
            return super().hits(out, batch)
        n, lab = len(batch.x), batch.rows.labeled
        return (rows_of(out.lengths, lab, n).argmax(1) == rows_of(batch.y, lab, n)).float()
