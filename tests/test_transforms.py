"""Tests for effcn.data.transforms.registry: one explicit registry of every augmentation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from effcn.data.transforms import AUGMENTATIONS, build_augment, list_augmentations

DATASET_MODULES = ("base", "idx", "mnist", "fashion_mnist", "smallnorb", "cifar10", "affnist",
                   "multimnist", "numbers", "user_images")

# The input each augmentation is meant for, (C, H, W); the MNIST policy's 28x28 otherwise.
INPUT_SHAPES = {"smallnorb": (2, 96, 96), "cifar10": (3, 32, 32), "place": (1, 40, 40),
                "place+paper": (1, 40, 40)}


def test_registry_is_complete_without_importing_a_dataset_module():
    """A fresh process that imports only the registry sees every name, and no dataset module
    gets imported on the way: no entry depends on which dataset was imported first."""
    code = ("import json, sys; from effcn.data.transforms.registry import list_augmentations; "
            "print(json.dumps([list_augmentations(), sorted(m for m in sys.modules "
            "if m.startswith('effcn.data.') and '.transforms' not in m)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    names, loaded = json.loads(out)
    assert not [m for m in loaded if m.rsplit(".", 1)[-1] in DATASET_MODULES], loaded
    assert names == list_augmentations()  # this process has imported the dataset modules too
    assert {"paper", "paper_smooth", "none", "rotate", "shift", "squish", "erase",
            "smallnorb", "cifar10", "place", "place+paper"} == set(names)
    assert set(AUGMENTATIONS) <= set(names)


def _batch(name: str, device: str) -> torch.Tensor:
    """Three images with content in the middle (so shifts and placement have margins)."""
    c, h, w = INPUT_SHAPES.get(name, (1, 28, 28))
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(3, c, h, w)
    x[..., h // 4: 3 * h // 4, w // 4: 3 * w // 4] = torch.rand(3, c, h - 2 * (h // 4),
                                                                 w - 2 * (w // 4), generator=g)
    return x.to(device)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list_augmentations())
def test_every_augmentation_keeps_dtype_device_and_the_evaluated_shape(name, device):
    """Output dtype and device are the input's; the shape is the input's, or, for an augmentation
    with an evaluation preprocessing (smallNORB's crop), the shape that preprocessing gives."""
    aug = build_augment(name)
    x = _batch(name, device)
    out = aug(x, generator=torch.Generator(device=device).manual_seed(1))
    expected = aug.eval_transform(x).shape if hasattr(aug, "eval_transform") else x.shape
    assert out.shape == expected and out.dtype == x.dtype and out.device == x.device
    assert torch.isfinite(out).all()
    if name == "none":
        assert torch.equal(out, x)
    else:  # each draws something: another seed gives another batch
        again = aug(x, generator=torch.Generator(device=device).manual_seed(2))
        assert not torch.equal(out, again)
