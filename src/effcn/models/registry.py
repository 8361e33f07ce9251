"""A small registry of named model variants (timm-style): create_model / list_models, and
count_parameters.

Each name maps to a model class and its default dataclass config. Checkpoints store the name and
the full config, so ``create_model(name, **config)`` rebuilds a trained model exactly.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Callable

import torch.nn as nn

from ..errors import ConfigError

_REGISTRY: dict[str, tuple[type, Callable[[], object], str]] = {}


def register_model(name: str, cls: type, config_fn: Callable[[], object], description: str = ""):
    """Register ``name`` -> ``cls(config_fn())``; config_fn returns a fresh dataclass config."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = (cls, config_fn, description)


def list_models(filter: str = "") -> list[str]:
    """The registered names, sorted; ``filter`` a glob pattern keeps the matching ones
    (``list_models("efficient_capsnet_*")``), as timm's list_models does."""
    names = sorted(_REGISTRY)
    return fnmatch.filter(names, filter) if filter else names


def describe_model(name: str) -> str:
    """The preset's one-line description, with the config's ``describe_primary()`` line where it
    has one (parameter counts: ``effcn models`` computes them)."""
    _, config_fn, description = _lookup(name)
    describe_primary = getattr(config_fn(), "describe_primary", None)
    return f"{description}; {describe_primary()}" if describe_primary else description


def count_parameters(module: nn.Module, include_decoder: bool = True) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers and do not count);
    ``include_decoder=False`` leaves out those under a ``decoder`` attribute."""
    return sum(p.numel() for name, p in module.named_parameters()
               if p.requires_grad and (include_decoder or not name.startswith("decoder.")))


def class_names_or_indices(names, num_classes: int) -> list[str]:
    """``names`` as strings, or "0", "1", ... for a model of ``num_classes`` when none are kept
    (what checkpoints, published folders and predictions show)."""
    return [str(n) for n in names or []] or [str(i) for i in range(num_classes)]


def default_config(name: str):
    """The preset's dataclass config (a fresh copy)."""
    return _lookup(name)[1]()


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; keyword arguments override fields of its config.

    >>> create_model("efficient_capsnet_mnist", routing="uniform")
    """
    cls, config_fn, _ = _lookup(name)
    config = config_fn()
    valid = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(
            f"model {name!r} has no config field(s) {', '.join(unknown)}; "
            f"valid fields are: {', '.join(sorted(valid))}.")
    try:
        config = dataclasses.replace(config, **overrides)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid config for model {name!r}: {e}") from None
    model = cls(config)
    model.model_name = name
    return model


def input_shape(config) -> tuple[int, int, int]:
    """(C, H, W) of the images a model built from ``config`` takes: ``image_size`` high and
    ``image_width`` wide (a config without that field, or 0 in it, means square)."""
    return (config.in_channels, config.image_size,
            getattr(config, "image_width", 0) or config.image_size)


def model_config_dict(model: nn.Module) -> dict:
    """The config of a registry-built model as plain JSON-able data."""
    return dataclasses.asdict(model.config)


def _lookup(name: str):
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}.") from None
