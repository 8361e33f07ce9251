"""``effcn train --data DIR``: a config chosen from a look at your own images.

:func:`config_for_data` surveys the folder (or array file) and picks: the ``folder`` or
``arrays`` dataset, the number of classes (from the class folders), the channels (grey images
-> 1, else 3), the image size (the median of the images' longer sides, rounded to a multiple of
4, at least what the model's stem needs and at most :data:`LARGEST_SIDE`), Efficient-CapsNet's
MNIST preset re-sized (its primary-capsule kernel derived from the size), and an augmentation
for photos. It returns the config and one line per choice (the last: the whole config as
``--set`` fields that differ from the defaults), which the CLI prints; the run saves it as
``config.yaml`` like any run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence

from ..data.folder import survey
from ..errors import ConfigError
from ..models import default_config
from .config import Config
from .config_io import apply_overrides, config_from_dict

PRESET = "efficient_capsnet_mnist"
LARGEST_SIDE = 128      # a chosen size above this is capped (CPU cost grows with the square)
DEFAULT_EPOCHS = 30
VAL_FRACTION = 0.1      # of the training images, for selection, when there is no val split
# colour photos: pad-and-crop and horizontal flips; grey images may be digits or text, which a
# flip changes: none
AUGMENT = {3: ("cifar10", "pad by 4 and crop back, horizontal flip"), 1: ("none", "none")}


def config_for_data(data: str | Path, image_size: Optional[int] = None,
                    channels: Optional[int] = None, epochs: Optional[int] = None,
                    overrides: Sequence[str] = ()) -> tuple[Config, list[str]]:
    """A validated config for training on ``data`` (folder or array file), ``overrides``
    (``--set`` lines) applied last; and the lines that say what was chosen and why."""
    found = survey(data)
    lines = [f"data: {data} ({found.dataset}; {len(found.classes)} classes: "
             f"{', '.join(found.classes[:10])}{' ...' if len(found.classes) > 10 else ''})"]
    if len(found.classes) < 2:
        raise ConfigError(f"{data} holds one class ({found.classes[0]}); a classifier needs at "
                          f"least two class sub-folders.")
    if channels is None:
        channels = 1 if found.grey else 3
        lines.append(f"channels: {channels} (the images are {'grey' if found.grey else 'colour'};"
                     f" --channels to choose)")
    elif channels not in (1, 3):
        raise ConfigError(f"--channels must be 1 or 3, not {channels}.")
    preset = default_config(PRESET)
    if image_size is None:
        smallest = dataclasses.replace(preset, image_size=64).smallest_input_side()
        image_size = min(max(4 * round(found.median_side / 4), smallest), LARGEST_SIDE)
        lines.append(f"image size: {image_size}x{image_size} (median longer side "
                     f"{found.median_side} of {found.sampled} images, rounded to 4, kept within "
                     f"{smallest}-{LARGEST_SIDE}; --image-size to choose)")
    # the test share as --set will leave it (the validation size below is taken from the rest)
    fraction = apply_overrides(Config(), [o for o in overrides if o.partition("=")[0].strip()
                                          == "data.test_fraction"]).data.test_fraction
    held_out = 0 if found.has_test else round(fraction * found.n_train)
    train = found.n_train - held_out
    val_size = max(1, round(VAL_FRACTION * train))
    if not found.has_val:
        lines.append(f"validation: {val_size} of the {train} training images (seeded; "
                     f"--set data.val_size=N to change)")
    augment, what = AUGMENT[channels]
    lines.append(f"augmentation: {augment} ({what}; --set data.augment=... to change)")
    model_args = {"image_size": image_size, "in_channels": channels,
                  "num_classes": len(found.classes)}
    config = config_from_dict({
        "model": {"name": PRESET, "args": model_args},
        "data": {"dataset": found.dataset, "root": str(data), "augment": augment,
                 "image_size": image_size, "channels": channels, "val_size": val_size},
        "train": {"epochs": epochs or DEFAULT_EPOCHS},
    })
    config = apply_overrides(config, list(overrides))
    built = dataclasses.replace(preset, **config.model.args)
    lines.append(f"model: {config.model.name} with {model_args} ({built.describe_primary()})")
    lines.append("config: effcn train " + " ".join(f"--set {k}={v}" for k, v in
                                                   _changed(config.to_dict(), Config().to_dict())))
    return config, lines


def _changed(config: dict, defaults: dict, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) of every field of ``config`` that differs from ``defaults``."""
    out = []
    for key, value in config.items():
        if isinstance(value, dict) and value and isinstance(defaults.get(key), dict) \
                and defaults[key]:
            out += _changed(value, defaults[key], f"{prefix}{key}.")
        elif isinstance(value, dict):
            out += [(f"{prefix}{key}.{k}", v) for k, v in value.items()]
        elif value != defaults.get(key):
            out.append((f"{prefix}{key}", value))
    return out
