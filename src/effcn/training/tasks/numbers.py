"""MNIST numbers: k MNIST digits side by side, one label (the k-digit number), 10**k classes.

    effcn train --config configs/mnist_numbers2_cpu.yaml    (task.name=numbers, task.args.digits=2)

A classification task whose images are composed (data/numbers.py): the loss is classification's
(the margin loss, or the model's own, plus train.recon_weight x the MSE of the reconstruction of
the whole 28 x 28k image) and the metric is the accuracy of the whole number, every digit right.

- Training: an epoch is task.args.epoch_images numbers (0: as many as the training digits
  allow, digits // k), read k at a time from shuffled passes over the training digits, so one
  pass uses every digit once. Each digit is augmented on its own (data.augment, at 28x28)
  before the digits are placed; all of it on the device, from the epoch's generator.
- Validation: as many numbers as validation digits (data.val_size), composed from them only,
  index table seed 1: every validation digit once at every position.
- Test: as many numbers as test digits (10,000 for MNIST), from the test digits only, seed 0:
  every test digit once at every position; class counts are not balanced (about 10 per class
  for k = 3).
"""

from __future__ import annotations

import dataclasses

from ...data.numbers import NumberSet, epoch_table, number_labels, number_names, side_by_side
from ...errors import ConfigError
from .base import Batch, EvalSet, check_fields, scaled_pixels
from .classification import ClassificationTask

VAL_SEED, TEST_SEED = 1, 0
DRAWN = "each position a permutation of the source digits (one image per source digit)"


def preset_for(k: int) -> str:
    """The presets that take k-digit numbers, for messages."""
    if k == 1:
        return "efficient_capsnet_mnist or cnn_baseline_mnist"
    return f"efficient_capsnet_numbers{k} or cnn_baseline_numbers{k}"


def check_model_config(cfg, name: str, k: int) -> None:
    """A ConfigError unless the model config ``cfg`` takes 1x28x(28k) images of 10**k classes."""
    from ...models import input_shape
    c, h, w = input_shape(cfg)
    if (c, h, w, cfg.num_classes) != (1, 28, 28 * k, 10 ** k):
        raise ConfigError(f"mnist_numbers with task.args.digits={k} has 1x28x{28 * k} "
                          f"images of {10 ** k} classes but model {name} takes {c}x{h}x{w} "
                          f"images of {cfg.num_classes} classes; set model.name to "
                          f"{preset_for(k)}.")


class NumberImages(EvalSet):
    """A fixed set of numbers (data.numbers.NumberSet) as an evaluation set; pixels / divisor."""

    def __init__(self, numbers: NumberSet, name: str, divisor: float = 255.0):
        self.numbers, self.name, self.divisor = numbers, name, divisor

    def __len__(self) -> int:
        return len(self.numbers)

    def batch(self, start: int, stop: int) -> Batch:
        x, y = self.numbers.batch(start, stop)
        return Batch(scaled_pixels(x, self.divisor), y)

    def describe(self) -> dict:
        return {"images": len(self), "digits_per_image": self.numbers.k,
                "source_digits": len(self.numbers.labels), "seed": self.numbers.seed,
                "drawn": DRAWN}


class NumbersTask(ClassificationTask):
    name = "numbers"
    metric = "number accuracy"
    split_items = "digits"
    set_items = "numbers"
    dataset = "mnist_numbers"

    @dataclasses.dataclass
    class Args:
        digits: int = 2               # digits per image: 1, 2 or 3 (10, 100 or 1,000 classes)
        epoch_images: int = 0         # numbers per epoch; 0: training digits // digits

        def __post_init__(self):
            check_fields(self, minimum={"epoch_images": 0}, choices={"digits": (1, 2, 3)})

    def __init__(self, config):
        super().__init__(config)
        self.k = self.args.digits

    @classmethod
    def check_config(cls, config) -> None:
        from ...data.transforms import AUGMENTATIONS
        from ...models import default_config
        k, augment = cls.args_of(config).digits, config.data.augment.strip().lower()
        if augment in AUGMENTATIONS:
            raise ConfigError(f"data.augment={config.data.augment} does not apply to "
                              f"mnist_numbers (each 28x28 digit is augmented on its own); use "
                              f"paper, none or MNIST parts such as rotate+erase.")
        cfg = dataclasses.replace(default_config(config.model.name), **config.model.args)
        check_model_config(cfg, config.model.name, k)

    def setup(self, train, val) -> None:
        if len(train) < self.k:
            raise ConfigError(f"{len(train)} training digits cannot make a {self.k}-digit "
                              f"number; lower data.val_size or raise data.train_subset.")
        self.train_x, self.train_y = train.images, train.labels
        self.num_classes = 10 ** self.k
        self._val = self.eval_set(val, "val")

    def check_model(self, model) -> None:
        check_model_config(model.config, getattr(model, "model_name", type(model).__name__),
                           self.k)

    @property
    def epoch_size(self) -> int:
        return self.args.epoch_images or self.num_train // self.k

    def epoch_order(self, generator):
        """(epoch_size, k) training-digit indices: one row per number."""
        return epoch_table(self.num_train, self.epoch_size, self.k, generator)

    def train_batch(self, idx, generator) -> Batch:
        """The numbers of rows ``idx`` (B, k): each digit augmented, then placed side by side."""
        b, k = idx.shape
        x = self.augment(scaled_pixels(self.train_x[idx.reshape(-1)], self.config.data.pixel_divisor),
                         generator=generator)
        return Batch(side_by_side(x.view(b, k, *x.shape[1:])), number_labels(self.train_y[idx]))

    def class_names(self, split) -> list:
        return number_names(self.k)

    def numbers(self, split, name: str) -> NumberSet:
        """The fixed numbers of a split: one per digit, seed 0 for the test split, else 1."""
        return NumberSet(split.images, split.labels, self.k, len(split),
                         TEST_SEED if name == "test" else VAL_SEED)

    def figure_images(self, split):
        return self.numbers(split, "val").batch(0, len(split))

    def eval_set(self, split, name: str) -> EvalSet:
        return NumberImages(self.numbers(split, name), name, self.config.data.pixel_divisor)
