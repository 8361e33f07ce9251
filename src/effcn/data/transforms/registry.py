"""The one registry of training augmentations, selected by ``data.augment``.

Two kinds of names:

- MNIST policy specs, parsed by :func:`effcn.data.transforms.mnist_policy.parse_spec`:
  ``paper`` (the authors' exact augmentation), ``paper_smooth``, ``none``, the parts
  (``rotate``, ``shift``, ``squish``, ``erase``) joined with ``+``, each optionally followed by
  ``:`` and options (``paper:area,clamp``);
- the named augmentations of :data:`AUGMENTATIONS` (other datasets' pipelines), listed here
  explicitly: nothing is added by importing a dataset module.

Every augmentation is called as ``aug(images, generator=None)`` on float batches (B, C, H, W);
one that also changes what the model sees at evaluation has ``eval_transform(images)``.
"""

from __future__ import annotations

from typing import Callable, Dict, List

import torch

from effcn.data.transforms.mnist_policy import NAMED_SPECS, PARTS, MNISTAugment, parse_spec
from effcn.data.transforms.placement import RandomPlace
from effcn.data.transforms.preprocess import CIFARAugment, SmallNORBPreprocess


def place_then_paper() -> RandomPlace:
    """Random placement, then the paper's rotate, squish and erase (placement replaces its shift)."""
    return RandomPlace(MNISTAugment.from_spec("rotate+squish+erase"))


AUGMENTATIONS: Dict[str, Callable[[], torch.nn.Module]] = {
    "smallnorb": SmallNORBPreprocess,  # smallNORB: standardise, resize, crop, brightness/contrast
    "cifar10": CIFARAugment,           # CIFAR-10: pad-and-crop, horizontal flip
    "place": RandomPlace,              # affNIST protocol: re-place each digit on its canvas
    "place+paper": place_then_paper,
}
"""Named augmentations other than the MNIST policy specs: name -> factory() returning a module
called as ``aug(images, generator)``."""

MNIST_SPEC_NAMES = ("paper", *NAMED_SPECS, "none", *PARTS)
"""The MNIST policy specs that are single words (compositions and options parse too)."""


def list_augmentations() -> List[str]:
    """Every single-word ``data.augment`` name: the MNIST policy's and :data:`AUGMENTATIONS`."""
    return sorted({*MNIST_SPEC_NAMES, *AUGMENTATIONS})


def build_augment(spec: str) -> torch.nn.Module:
    """The training augmentation named by ``data.augment``: a name of :data:`AUGMENTATIONS`, or
    an MNIST spec ("paper", "paper_smooth", "none", "rotate+erase", "paper:floor", ...).
    ConfigError, one sentence, on an unknown name."""
    name = spec.strip().lower()
    if name in AUGMENTATIONS:
        return AUGMENTATIONS[name]()
    parts, cfg = parse_spec(name, registered=tuple(AUGMENTATIONS))
    return MNISTAugment(parts, cfg)
