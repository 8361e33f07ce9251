"""The train / validation / test splits of a config, as uint8 tensors on the device.

The validation split is a fixed random part of the training set (data.val_size images chosen by
data.split_seed), or the dataset's own val split where it has one (a folder's val/); model
selection uses it, and the test split is evaluated once, at the end.
Training and evaluation both take their images from here, so they always agree on the split.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError


@dataclass
class Split:
    """uint8 images (N, C, H, W) and int64 labels (N,), with the dataset's class names and its
    notes (what a folder dataset held out or skipped: one sentence each, for the log)."""
    images: torch.Tensor
    labels: torch.Tensor
    class_names: list
    notes: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def as_nchw(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) or (N, C, H, W) -> (N, C, H, W)."""
    return images.unsqueeze(1) if images.dim() == 3 else images


def load_dataset(config, split: str):
    """The dataset object of ``split`` ('train' or 'test') as configured."""
    from ..data import get_dataset
    cls = get_dataset(config.data.dataset)
    extra = {"options": image_options(config)} if getattr(cls, "takes_image_options", False) else {}
    return cls(root=config.data.root, split=split, download=config.data.download, **extra)


def image_options(config):
    """The data section's image fields for your own images (data/folder.py); size and channels
    0 -> the model's input."""
    from ..data.folder import ImageOptions
    from ..models import default_config, input_shape
    d = config.data
    size, channels = d.image_size, d.channels
    if not size or not channels:
        c, h, w = input_shape(dataclasses.replace(default_config(config.model.name),
                                                  **config.model.args))
        if not size and h != w:
            raise ConfigError(f"model {config.model.name} takes {h}x{w} images; your own images "
                              f"are made square, so set data.image_size and a square model.")
        size, channels = size or h, channels or c
    return ImageOptions(image_size=size, channels=channels, fit=d.fit,
                        skip_bad_files=d.skip_bad_files, max_pixels=d.max_pixels,
                        test_fraction=d.test_fraction, split_seed=d.split_seed)


def train_val_split(n: int, val_size: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val) of a fixed random split of n training images."""
    if val_size >= n:
        raise ConfigError(f"data.val_size={val_size} leaves no training images out of {n}; "
                          f"use a smaller validation split.")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    return perm[: n - val_size], perm[n - val_size:]


def labeled_subset(labels: torch.Tensor, n: int, num_classes: int, seed: int) -> torch.Tensor:
    """Sorted indices (n,) into a training split (labels (N,)) of the images that keep their
    labels (task.args.labeled, task.args.labeled_seed): class-balanced, n // num_classes of every
    class and one more of each of the first n % num_classes classes (0, 1, ...), each class's
    chosen at random by a CPU generator seeded by ``seed``; on the labels' device."""
    cpu = labels.cpu()
    if n > len(cpu):
        raise ConfigError(f"task.args.labeled={n} is more than the {len(cpu)} training images "
                          f"(those left after the validation split); lower it, or use 0 for all "
                          f"labeled.")
    if n < num_classes:
        raise ConfigError(f"task.args.labeled={n} leaves some of the {num_classes} classes "
                          f"without a labeled image; use at least {num_classes}.")
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(num_classes):
        want = n // num_classes + (1 if c < n % num_classes else 0)
        members = (cpu == c).nonzero().flatten()
        if len(members) < want:
            raise ConfigError(f"task.args.labeled={n} needs {want} labeled images of class {c} "
                              f"but the training split has {len(members)}; lower "
                              f"task.args.labeled.")
        chosen.append(members[torch.randperm(len(members), generator=g)[:want]])
    return torch.cat(chosen).sort().values.to(labels.device)


TEST_SELECTED = "test-selected (authors' protocol)"


def load_train_val(config, device) -> tuple[Split, Split]:
    """(train, selection split) of a config; train honours data.train_subset.

    The honest protocol (the default) carves the selection split out of the training set. With
    data.protocol=authors, as the authors' code does, training uses every training image and the
    epochs are selected on the TEST split: its figures are then test-selected, and say so."""
    ds = load_dataset(config, "train")
    images, labels = as_nchw(ds.images), ds.labels.long()
    names, notes = list(getattr(ds, "classes", [])), list(getattr(ds, "notes", []))
    authors = config.data.protocol == "authors"
    own_val = not authors and getattr(ds, "has_val_split", False)
    if authors or own_val:
        train_idx = torch.arange(len(labels))
    else:
        train_idx, val_idx = train_val_split(len(labels), config.data.val_size,
                                             config.data.split_seed)
    if config.data.train_subset:
        train_idx = train_idx[: config.data.train_subset]
    train = Split(images[train_idx].to(device), labels[train_idx].to(device), names, notes)
    if authors:
        return train, load_test(config, device)
    if own_val:
        val = load_dataset(config, "val")
        return train, Split(as_nchw(val.images).to(device), val.labels.long().to(device), names)
    return train, Split(images[val_idx].to(device), labels[val_idx].to(device), names)


def load_test(config, device) -> Split:
    ds = load_dataset(config, "test")
    return Split(as_nchw(ds.images).to(device), ds.labels.long().to(device),
                 list(getattr(ds, "classes", [])))


def load_eval_split(config, split: str, device) -> Split:
    """'test' or 'val' (the validation part of the training set)."""
    if split == "test":
        return load_test(config, device)
    if split == "val":
        return load_train_val(config, device)[1]
    raise ConfigError(f"split must be test or val, got {split!r}.")
