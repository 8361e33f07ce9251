"""Import the Efficient-CapsNet authors' trained Keras weights (.h5) into an effcn model.

    effcn import-keras efficient_capsnet_SMALLNORB.h5 --preset smallnorb --out runs/smallnorb_keras

The authors' files (Keras 2.4, ``model.save_weights``) hold one group per sub-model: the capsule
network (its ``weight_names`` attribute lists, in layer order, the stem's conv kernels/biases
with their norm's weights, the primary capsules' grouped conv and ``digit_caps`` W and b) and
the ``Generator`` (decoder: dense then convs). Tensors are matched by that order against the
effcn model's own layers, and converted from Keras layouts:

- conv kernels HWIO (kh, kw, in / groups, out) -> OIHW (out, in / groups, kh, kw); the primary
  capsules' conv is a Keras Conv2D with ``groups=channels``, kernel (k, k, 1, C) -> (C, 1, k, k);
- dense kernels (in, out) -> (out, in);
- InstanceNorm gamma/beta and BatchNorm gamma/beta/moving mean/moving variance as they are
  (the moving statistics may come after all trainable tensors: see ``keras_order``);
- digit_caps W (n_out, n_in, d_in, d_out) as it is; b (n_out, n_in, 1) -> (n_out, n_in).

Every name kind and shape is checked before anything is written; a file that does not match the
preset is refused with a CheckpointError naming the first mismatch. The model's sizes (classes,
capsule dimensions, image size) come from the preset, never from the file, and each tensor's
declared shape is checked against them before it is read: a file declaring huge tensors
allocates nothing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..errors import CheckpointError, EffcnError

# preset name on the command line -> (registered model, dataset, data.augment, class names)
PRESETS = {
    "smallnorb": ("efficient_capsnet_smallnorb", "smallnorb", "smallnorb",
                  ["animal", "human", "airplane", "truck", "car"]),
    "mnist": ("efficient_capsnet_mnist", "mnist", "paper", [str(i) for i in range(10)]),
    "multimnist": ("efficient_capsnet_multimnist", "multimnist", "none",
                   [str(i) for i in range(10)]),
}
# The capsule layer's name: "digit_caps" in the published smallNORB file, "fc_caps" in files
# saved by the authors' current code (whose primary conv is then "primary_caps/conv2d").
CAPSULE_LAYER_NAMES = ("digit_caps", "fc_caps")


def _conv_kernel(k: np.ndarray) -> np.ndarray:
    return k.transpose(3, 2, 0, 1)


def _dense_kernel(k: np.ndarray) -> np.ndarray:
    return k.T


def _same(a: np.ndarray) -> np.ndarray:
    return a


def _squeeze_last(a: np.ndarray) -> np.ndarray:
    return a[..., 0] if a.ndim and a.shape[-1] == 1 else a


# One expected Keras tensor: (layer kind in its name, weight suffix, effcn parameter, converter).
Slot = Tuple[str, str, str, object]


def _module_slots(prefix: str, module: nn.Module) -> List[Slot]:
    """The Keras tensors of one effcn layer, in Keras' order."""
    if isinstance(module, nn.Conv2d):
        return [("conv2d", "kernel", f"{prefix}.weight", _conv_kernel),
                ("conv2d", "bias", f"{prefix}.bias", _same)]
    if isinstance(module, nn.Linear):
        return [("dense", "kernel", f"{prefix}.weight", _dense_kernel),
                ("dense", "bias", f"{prefix}.bias", _same)]
    if isinstance(module, nn.InstanceNorm2d):
        return [("instance_normalization", "gamma", f"{prefix}.weight", _same),
                ("instance_normalization", "beta", f"{prefix}.bias", _same)]
    if isinstance(module, nn.BatchNorm2d):
        return [("batch_normalization", "gamma", f"{prefix}.weight", _same),
                ("batch_normalization", "beta", f"{prefix}.bias", _same),
                ("batch_normalization", "moving_mean", f"{prefix}.running_mean", _same),
                ("batch_normalization", "moving_variance", f"{prefix}.running_var", _same)]
    return []


def expected_slots(model: nn.Module) -> Tuple[List[Slot], List[Slot]]:
    """(capsule network slots, generator slots) of an EfficientCapsNet, in Keras' order."""
    caps: List[Slot] = []
    for name, module in model.stem.named_children():
        caps += _module_slots(f"stem.{name}", module)
    caps += _module_slots("primary.conv", model.primary.conv)
    caps += [("digit_caps", "W", "digit_caps.W", _same),
             ("digit_caps", "b", "digit_caps.b", _squeeze_last)]
    gen: List[Slot] = []
    if model.decoder is not None:
        for name, module in model.decoder.named_modules():
            gen += _module_slots(f"decoder.{name}", module)
    return caps, gen


def _names(attr) -> List[str]:
    """An HDF5 attribute holding names (bytes or str) as a list of str."""
    return [n.decode() if isinstance(n, bytes) else str(n) for n in attr]


def _read_group(f, group_name: str, path: Path) -> list:
    """[(weight name, h5py dataset)] of a Keras weights group, in its ``weight_names`` order.

    The datasets are not read here: :func:`_match` checks each declared shape and type against
    the preset before reading it (a crafted file may declare terabytes in a few bytes)."""
    group = f[group_name]
    names = _names(group.attrs.get("weight_names", []))
    out = []
    for n in names:
        if n not in group or not hasattr(group[n], "shape"):
            raise CheckpointError(f"{path} lists weight {group_name}/{n} but does not contain it; "
                                  f"the file is damaged, download it again.")
        out.append((n, group[n]))
    return out


def _find_groups(f, path: Path):
    """The (capsule network, generator) weight group names of a Keras weights file."""
    with_weights = [n for n in _names(f.attrs.get("layer_names", []))
                    if n in f and len(f[n].attrs.get("weight_names", []))]
    caps = [n for n in with_weights if any(_layer_kind(w) in CAPSULE_LAYER_NAMES
                                           for w in _names(f[n].attrs["weight_names"]))]
    if len(caps) != 1:
        raise CheckpointError(f"{path} is not an Efficient-CapsNet Keras weights file (expected "
                              f"one layer group holding digit_caps or fc_caps weights among "
                              f"{', '.join(with_weights) or 'no groups'}); pass the authors' "
                              f".h5 file of this preset.")
    others = [n for n in with_weights if n != caps[0]]
    return caps[0], (others[0] if len(others) == 1 else None), others


_NON_TRAINABLE = ("moving_mean", "moving_variance")


def keras_order(slots: List[Slot], tensors) -> List[Slot]:
    """``slots`` in the order of the file's tensors. Keras saves a nested model's weights as
    all its trainable weights, then all non-trainable ones (BatchNorm moving statistics), so
    in the authors' files the moving statistics come last; a flat save keeps them beside
    gamma and beta. Both are accepted: the order whose weight names fit is used."""
    last = ([s for s in slots if s[1] not in _NON_TRAINABLE] +
            [s for s in slots if s[1] in _NON_TRAINABLE])
    names = [name.rpartition("/")[2].split(":")[0] for name, _ in tensors]
    return last if [s[1] for s in last] == names else slots


def _layer_kind(name: str) -> str:
    """The kind of layer a Keras weight name belongs to: "primary_caps/conv2d_3/kernel:0" ->
    "conv2d", "fc_caps/W:0" -> "fc_caps" (the last path part before the weight, numbering
    dropped)."""
    layer = name.rpartition("/")[0]
    return layer.rpartition("/")[2].rstrip("0123456789").rstrip("_")


def _match(slots: List[Slot], tensors, state: dict, group: str, path: Path, preset: str) -> dict:
    slots = keras_order(slots, tensors)
    if len(tensors) != len(slots):
        raise CheckpointError(f"{path} group {group} holds {len(tensors)} tensors but the "
                              f"{preset} preset expects {len(slots)}; this file belongs to "
                              f"another model, use the preset it was trained with.")
    mapped = {}
    for (kind, suffix, target, convert), (name, array) in zip(slots, tensors):
        weight = name.rpartition("/")[2].split(":")[0]
        layer_kind = _layer_kind(name)
        kinds = CAPSULE_LAYER_NAMES if kind == "digit_caps" else (kind,)
        if layer_kind not in kinds or weight != suffix:
            raise CheckpointError(f"{path} tensor {group}/{name} is not the expected {kind} "
                                  f"{suffix} for {target}; this file belongs to another model, "
                                  f"use the preset it was trained with.")
        want = tuple(state[target].shape)
        declared = tuple(int(d) for d in array.shape)  # from the header: nothing read yet
        if np.dtype(array.dtype).kind not in "fiu":
            raise CheckpointError(f"{path} tensor {group}/{name} holds {array.dtype} values, not "
                                  f"numbers, for {target}; the file is damaged or not a Keras "
                                  f"weights file.")
        if math.prod(declared) != math.prod(want):
            raise CheckpointError(f"{path} tensor {group}/{name} has shape {declared} but "
                                  f"{target} of the {preset} preset is {want}; use the preset "
                                  f"this file was trained with.")
        array = np.asarray(array, dtype=np.float32)
        value = convert(array)
        if tuple(value.shape) != want:
            raise CheckpointError(f"{path} tensor {group}/{name} has shape {array.shape}, which "
                                  f"gives {tuple(value.shape)} but {target} of the {preset} "
                                  f"preset is {want}; use the preset this file was trained with.")
        mapped[target] = (name, torch.from_numpy(np.ascontiguousarray(value)))
    return mapped


def import_keras_weights(path: str | Path, preset: str = "smallnorb"):
    """Build the preset's model and load the .h5 file into it.

    Returns (model, mapping): mapping is {effcn parameter: Keras tensor name} for every tensor.
    """
    path = Path(path)
    if preset not in PRESETS:
        raise EffcnError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}.")
    try:
        import h5py
    except ImportError:
        raise EffcnError("importing Keras weights needs h5py; install it with "
                         "pip install 'effcn[h5]'.") from None
    if not path.is_file():
        raise CheckpointError(f"Keras weights file {path} does not exist; pass the path of the "
                              f"authors' .h5 file.")
    from .registry import create_model
    model_name = PRESETS[preset][0]
    model = create_model(model_name)
    state = model.state_dict()
    caps_slots, gen_slots = expected_slots(model)
    try:
        with h5py.File(path, "r") as f:
            caps_group, gen_group, others = _find_groups(f, path)
            mapped = _match(caps_slots, _read_group(f, caps_group, path), state, caps_group,
                            path, preset)
            if gen_slots:
                if gen_group is None:
                    raise CheckpointError(f"{path} has no single generator group (found "
                                          f"{', '.join(others) or 'none'}) for the {preset} "
                                          f"decoder; use the authors' full weights file.")
                mapped.update(_match(gen_slots, _read_group(f, gen_group, path), state,
                                     gen_group, path, preset))
    except OSError as e:
        raise CheckpointError(f"{path} is not a readable HDF5 file ({e}); pass the authors' "
                              f"Keras .h5 weights file.") from None
    return model, _load_mapped(model, state, mapped, path, preset)


def load_keras_arrays(model: nn.Module, tensors, source: str = "arrays", preset: str = ""):
    """Load Keras weights given as [(Keras name, array)] in the order of the authors'
    ``model.weights`` (capsule network, then generator) into an EfficientCapsNet, with the same
    checks as the .h5 import; returns {effcn parameter: Keras name}."""
    state = model.state_dict()
    caps_slots, gen_slots = expected_slots(model)
    tensors = [(name, np.asarray(a, dtype=np.float32)) for name, a in tensors]
    n = len(caps_slots)
    mapped = _match(caps_slots, tensors[:n], state, "capsule network", source, preset)
    if gen_slots:
        mapped.update(_match(gen_slots, tensors[n:], state, "generator", source, preset))
    return _load_mapped(model, state, mapped, source, preset)


def _load_mapped(model, state: dict, mapped: dict, path, preset: str) -> dict:
    for target, (_, tensor) in mapped.items():
        state[target] = tensor
    model.load_state_dict(state)
    learnable = {n for n, _ in model.named_parameters()}
    missing = sorted(learnable - set(mapped))
    if missing:  # cannot happen for the registered presets; guards future layers
        raise CheckpointError(f"{path} left {', '.join(missing)} of the {preset} preset unset.")
    return {target: name for target, (name, _) in mapped.items()}
