"""Dataset registry.

Convention for an entry of ``DATASETS`` (name -> class): the class takes
``(root=None, split="train", download=False)``, has a one-line ``description``, and the
classmethods ``search_dirs(root) -> [Path]`` (folders searched, in order) and
``locate(root, split) -> Path | None`` (the folder holding that split, without reading it),
and names its splits in ``splits`` (a tuple) or as the keys of a ``files`` dict.
Items are ``(image uint8 tensor (C, H, W), int label)``. ``register_dataset`` adds one.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from effcn.data.affnist import MNIST40, AffNIST, AffNISTStyle
from effcn.data.cifar10 import CIFAR10
from effcn.data.fashion_mnist import FashionMNIST
from effcn.data.mnist import IDXClassification, IDXFolder, MNIST
from effcn.data.multimnist import MultiMNIST
from effcn.data.numbers import MNISTNumbers
from effcn.data.smallnorb import SmallNORB
from effcn.errors import DataError

DATASETS: Dict[str, type] = {
    "mnist": MNIST,
    "idx": IDXFolder,
    "fashion_mnist": FashionMNIST,
    "smallnorb": SmallNORB,
    "cifar10": CIFAR10,
    "mnist40": MNIST40,
    "affnist": AffNIST,
    "affnist_style": AffNISTStyle,
    "multimnist": MultiMNIST,
    "mnist_numbers": MNISTNumbers,
}


def register_dataset(name: str, cls: type) -> type:
    """Register ``cls`` (following the convention above) as ``data.dataset=name``; returns cls."""
    if name in DATASETS:
        raise ValueError(f"dataset {name!r} is already registered")
    DATASETS[name] = cls
    return cls


def list_datasets() -> List[str]:
    """Registered dataset names, sorted."""
    return sorted(DATASETS)


def get_dataset(name: str) -> type:
    """The dataset class registered as ``name``."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(
            f"Unknown dataset {name!r}; use one of {', '.join(list_datasets())} (CLI: --set data.dataset=...)."
        ) from None


def describe_datasets(root: Optional[str] = None) -> List[Dict[str, object]]:
    """One dict per dataset for ``effcn datasets``: name, description, searched (folders, in order),
    found (first folder holding a complete split, or None) and splits ({split: folder or None}).

    Only looks for files; nothing is read or verified.
    """
    out = []
    for name in list_datasets():
        cls = DATASETS[name]
        splits = {}
        for split in getattr(cls, "splits", None) or tuple(cls.files):
            folder = cls.locate(root, split)
            splits[split] = None if folder is None else str(folder)
        found = next((f for f in splits.values() if f is not None), None)
        out.append({
            "name": name,
            "description": cls.description,
            "searched": [str(d) for d in cls.search_dirs(root)],
            "found": found,
            "splits": splits,
        })
    return out


__all__ = ["DATASETS", "register_dataset", "get_dataset", "list_datasets", "describe_datasets", "IDXClassification", "MNIST", "IDXFolder", "FashionMNIST",
           "SmallNORB", "CIFAR10"]
