"""Dataset registry.

Convention for an entry of ``DATASETS`` (name -> class): the class takes
``(root=None, split="train", download=False)``, has a one-line ``description``, and the
classmethods ``search_dirs(root) -> [Path]`` (folders searched, in order) and
``locate(root, split) -> Path | None`` (the folder holding that split, without reading it),
and names its splits in ``splits`` (a tuple) or as the keys of a ``files`` dict.
Items are ``(image uint8 tensor (C, H, W), int label)``. A class that also takes
``options=ImageOptions(...)`` (your own images: ``folder``, ``arrays``) sets
``takes_image_options = True``; training passes the data section's image fields.

The dataset modules are imported on first use of ``DATASETS`` or a class name (PEP 562), so
``effcn.data.transforms`` and ``effcn.data.geometry`` load without any dataset module.
``register_dataset`` adds one.
"""

from __future__ import annotations

import importlib
from typing import Dict, List, Optional

from effcn.errors import DataError

_CLASSES = {  # public class -> its module under effcn.data
    "LocalDataset": "base", "IDXClassification": "idx", "MNIST": "mnist", "IDXFolder": "mnist",
    "FashionMNIST": "fashion_mnist", "SmallNORB": "smallnorb", "CIFAR10": "cifar10",
    "MNIST40": "affnist", "AffNIST": "affnist", "AffNISTStyle": "affnist",
    "MultiMNIST": "multimnist", "MNISTNumbers": "numbers",
    "ImageFolder": "folder", "ArrayFile": "folder",
}
_REGISTERED = {  # registry key -> class name
    "mnist": "MNIST", "idx": "IDXFolder", "fashion_mnist": "FashionMNIST",
    "smallnorb": "SmallNORB", "cifar10": "CIFAR10", "mnist40": "MNIST40", "affnist": "AffNIST",
    "affnist_style": "AffNISTStyle", "multimnist": "MultiMNIST", "mnist_numbers": "MNISTNumbers",
    "folder": "ImageFolder", "arrays": "ArrayFile",
}


def __getattr__(name: str):
    if name in _CLASSES:
        value = getattr(importlib.import_module(f"effcn.data.{_CLASSES[name]}"), name)
    elif name == "DATASETS":
        value = {key: __getattr__(cls) for key, cls in _REGISTERED.items()}
    else:
        raise AttributeError(f"module 'effcn.data' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def _datasets() -> Dict[str, type]:
    return globals()["DATASETS"] if "DATASETS" in globals() else __getattr__("DATASETS")


def register_dataset(name: str, cls: type) -> type:
    """Register ``cls`` (following the convention above) as ``data.dataset=name``; returns cls."""
    datasets = _datasets()
    if name in datasets:
        raise ValueError(f"dataset {name!r} is already registered")
    datasets[name] = cls
    return cls


def list_datasets() -> List[str]:
    """Registered dataset names, sorted."""
    return sorted(_datasets())


def get_dataset(name: str) -> type:
    """The dataset class registered as ``name``."""
    try:
        return _datasets()[name]
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
        cls = get_dataset(name)
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


__all__ = ["DATASETS", "get_dataset", "list_datasets", "describe_datasets", "register_dataset", *_CLASSES]
