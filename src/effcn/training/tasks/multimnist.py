"""MultiMNIST: two overlapping digits, two labels, two reconstructions, two-digit accuracy.

    effcn train --config configs/multimnist.yaml     (task.name=multimnist, data.dataset=multimnist)

The loss (the paper's): margin loss with both digits as targets (multi-hot), plus 0.196 * MSE for
each of the two reconstructions, each decoded from the capsules masked by its own true label and
compared with its own shifted digit (train.recon_weight is the weight of EACH reconstruction).
The metric: the two longest capsules against the two true labels, each label counting half.
Training pairs are composed on the device, fresh each batch; validation pairs are fixed (one
partner per validation digit), test pairs too (task.args.partners per test digit).

As in the authors' code, by default: a training partner is any other image (task.args.same_label;
a shared label then has target 2, not clamped, in the margin loss too), an epoch can be longer
than one pass over the digits (task.args.epoch_pairs: theirs is 600,000 pairs, 37,500 steps of
16, so the per-epoch learning-rate decay comes every 600,000 pairs) and the test pairs are built
their way (task.args.test_style).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from ...capsules import margin_loss, reconstruction_loss
from ...data.multimnist import (AnyOtherImage, MultiMNISTPairs, PartnerSampler, compose_batch,
                                pad_digits)
from ...errors import ConfigError
from .base import Batch, EvalSet, Task, check_fields

RECON_WEIGHT_EACH = 0.196  # the paper: 0.196 per digit (the MNIST model's 0.392 split in two)
VAL_SEED, TEST_SEED = 1, 0


def two_label_loss(lengths: torch.Tensor, recs: torch.Tensor | None, parts: torch.Tensor,
                   labels2: torch.Tensor, recon_weight: float = RECON_WEIGHT_EACH):
    """(total, margin, recon) with recon = MSE(rec_1, digit_1) + MSE(rec_2, digit_2).

    lengths (B, C); recs and parts (B, 2, C_img, H, W); labels2 (B, 2) with different labels.
    total = margin + recon_weight * recon (recon_weight applies to each of the two).
    """
    # Follows the authors' code: onehot_1 + onehot_2, not clamped (2 for a shared label).
    targets = F.one_hot(labels2, lengths.shape[1]).sum(dim=1)
    margin = margin_loss(lengths, targets)
    if recs is None or recon_weight == 0:
        recon = torch.zeros((), device=lengths.device)
    else:
        recon = (reconstruction_loss(recs[:, 0], parts[:, 0])
                 + reconstruction_loss(recs[:, 1], parts[:, 1]))
    return margin + recon_weight * recon, margin, recon


def two_digit_found(lengths: torch.Tensor, labels2: torch.Tensor) -> torch.Tensor:
    """(B, 2) in {0, 1}: whether each true label is among the two longest capsules."""
    top2 = lengths.topk(2, dim=1).indices
    return (top2[:, None, :] == labels2[:, :, None]).any(dim=2).float()


def two_digit_accuracy(lengths: torch.Tensor, labels2: torch.Tensor) -> float:
    """The MultiMNIST accuracy: each of the two true labels found in the top two counts half."""
    return float(two_digit_found(lengths, labels2).mean())


class PairSet(EvalSet):
    """A fixed set of MultiMNIST pairs (data.multimnist.MultiMNISTPairs) as an evaluation set."""

    def __init__(self, pairs: MultiMNISTPairs, name: str):
        self.pairs, self.name = pairs, name

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, start: int, stop: int) -> Batch:
        x, y2, parts = self.pairs.batch(start, stop)
        return Batch(x, y2, parts)

    def describe(self) -> dict:
        return {"images": len(self), "digits": self.pairs.n_digits,
                "partners": self.pairs.partners}


class MultiMNISTTask(Task):
    name = "multimnist"
    metric = "two-digit accuracy"
    split_items = "digits"
    set_items = "pairs"
    dataset = "multimnist"

    @dataclasses.dataclass
    class Args:
        partners: int = 1000          # test set: partners per test digit
        test_digits: int = 0          # test set: the first N test digits (0: all)
        same_label: bool = True       # training partners: any other image (the authors') or
                                      # false: only digits of another label
        epoch_pairs: int = 0          # pairs per epoch (the authors': 600000); 0: one pass
        test_style: str = "authors"   # authors | resampled (effcn's earlier test pairs)

        def __post_init__(self):
            check_fields(self, minimum={"partners": 1, "test_digits": 0, "epoch_pairs": 0},
                         choices={"test_style": ("authors", "resampled")})

    @classmethod
    def check_config(cls, config) -> None:
        if config.data.augment.strip().lower() != "none":
            raise ConfigError(f"data.augment={config.data.augment} does not apply to multimnist "
                              f"(its pairs are shifted by the generator); set data.augment=none.")

    def setup(self, train, val) -> None:
        # Padded to 36x36 once, uint8 on the device; pairs are composed per batch.
        self.train_x, self.train_y = pad_digits(train.images), train.labels
        self.sampler = (AnyOtherImage(len(self.train_y)) if self.args.same_label
                        else PartnerSampler(self.train_y))
        self._val = self.eval_set(val, "val")

    @property
    def num_train(self) -> int:
        return len(self.train_y)

    @property
    def epoch_size(self) -> int:
        return self.args.epoch_pairs or self.num_train

    def epoch_order(self, generator: torch.Generator) -> torch.Tensor:
        """As many passes over the digits as task.args.epoch_pairs asks (each pass its own
        permutation), cut to that many pairs."""
        passes = -(-self.epoch_size // self.num_train)
        return torch.cat([torch.randperm(self.num_train, generator=generator,
                                         device=generator.device)
                          for _ in range(passes)])[: self.epoch_size]

    def check_model(self, model) -> None:
        if not hasattr(model, "encode") or getattr(model, "decoder", None) is None:
            raise ConfigError(f"model {getattr(model, 'model_name', type(model).__name__)} "
                              f"cannot be trained on MultiMNIST (it needs capsules and a "
                              f"decoder); use efficient_capsnet_multimnist.")
        cfg = model.config
        if (cfg.in_channels, cfg.image_size) != (1, 36):
            raise ConfigError(f"MultiMNIST pairs are 1x36x36 but model {model.model_name} "
                              f"expects {cfg.in_channels}x{cfg.image_size}x{cfg.image_size}; "
                              f"use efficient_capsnet_multimnist.")

    def train_batch(self, idx, generator) -> Batch:
        x, y2, parts = compose_batch(self.train_x, self.train_y, idx, self.sampler, generator)
        return Batch(x, y2, parts)

    def loss(self, model, out, batch: Batch):
        return two_label_loss(out.lengths, out.reconstruction, batch.target, batch.y,
                              self.config.train.recon_weight)

    def hits(self, out, batch: Batch) -> torch.Tensor:
        return two_digit_found(out.lengths, batch.y)

    def model_images(self, images: torch.Tensor) -> torch.Tensor:
        return pad_digits(images)

    def decoder_labels(self, batch: Batch, training: bool):
        return batch.y  # the loss compares each reconstruction with its own true digit

    def val_set(self) -> EvalSet:
        return self._val

    def eval_set(self, split, name: str) -> EvalSet:
        """Validation: one partner per digit (seed 1); test: task.args.partners per digit of the
        first task.args.test_digits test digits (seed 0)."""
        a = self.args
        if name == "test":
            pairs = MultiMNISTPairs(split.images, split.labels, partners=a.partners,
                                    seed=TEST_SEED, n_digits=a.test_digits, style=a.test_style)
        else:
            pairs = MultiMNISTPairs(split.images, split.labels, partners=1, seed=VAL_SEED,
                                    style=a.test_style)
        return PairSet(pairs, name)

    def describe_eval_set(self, eval_set: PairSet) -> str:
        pairs = eval_set.pairs
        return f"{len(eval_set)} pairs ({pairs.n_digits} digits x {pairs.partners} partners)"

    def eval_figures(self, model, eval_set: PairSet, out_dir: Path) -> list[Path]:
        """The overlap figure of the set's most overlapping pairs (overlap_<split>.png)."""
        from ...analysis.multimnist import overlap_figure  # figures sit above training
        path = Path(out_dir) / f"overlap_{eval_set.name}.png"
        return [overlap_figure(model, eval_set.pairs, path)]
