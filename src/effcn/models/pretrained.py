"""Pretrained folders: a model as the Hugging Face Hub lays it out, written and read safely.

    save_pretrained(model, "out/", class_names=[...])      out/model.safetensors + out/config.json
    model = from_pretrained("out/")                        or a Hub id: "user/name"

A folder holds ``model.safetensors`` (the weights, tensors only) and ``config.json`` (plain JSON:
the registered model name and its full config, the class names, the input size (C, H, W), the
pixel divisor, and whatever the writer adds, e.g. the run's config that rebuilds its test set);
``effcn publish`` adds a README.md model card. Loading never executes code, and every size that
config.json declares is bounded before anything is allocated: the network is first built on
PyTorch's "meta" device (no memory) and its tensor shapes are checked against the file's header,
so the weights allocated are exactly those the file holds.

``EffcnHubModel`` (where huggingface_hub is installed) is the same folder through
``PyTorchModelHubMixin``: ``EffcnHubModel.from_pretrained("user/name")``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .._version import __version__
from ..errors import CheckpointError, ConfigError, EffcnError
from ..io import atomic_write_bytes, write_json
from .registry import class_names_or_indices, create_model, input_shape, model_config_dict

FORMAT = "effcn-pretrained-v1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# Bounds on what a config.json may declare, checked before anything is built.
MAX_CONFIG_BYTES = 4 << 20          # config.json itself
MAX_SIZE = 1 << 16                  # any integer of the model's config (classes, pixels, widths)
MAX_LIST = 256                      # any list of the model's config (e.g. the stem's layers)
MAX_PARAMETERS = 1 << 30            # numbers in all tensors together (4 GiB as float32)
MAX_NAME = 256                      # characters of a class name
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class Pretrained:
    """A loaded folder: the model (eval mode, on ``device``) and its config.json."""
    model: torch.nn.Module
    config: dict
    folder: Path

    @property
    def class_names(self) -> list[str]:
        return self.config["class_names"]


def is_pretrained_folder(path: str | Path) -> bool:
    """A folder with config.json and model.safetensors."""
    path = Path(path)
    return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


# --------------------------------------------------------------------------------- writing
def save_pretrained(model: torch.nn.Module, directory: str | Path, class_names=(),
                    pixel_divisor: float = 255.0, extra: dict | None = None,
                    force: bool = False) -> Path:
    """Write ``model`` (a registry-built network, with the weights it should be used with) as
    DIRECTORY/model.safetensors + DIRECTORY/config.json, atomically; ``extra`` adds keys to
    config.json. A non-empty DIRECTORY is refused unless ``force``. Returns DIRECTORY."""
    safetensors_torch = _safetensors()
    directory = Path(directory)
    check_output_folder(directory, force)
    names = class_names_or_indices(class_names, model.config.num_classes)
    config = {"format": FORMAT, "library_name": "effcn", "effcn_version": __version__,
              "model_name": model.model_name, "model_args": model_config_dict(model),
              "class_names": names, "input_size": list(input_shape(model.config)),
              "pixel_divisor": float(pixel_divisor)}
    config.update({k: v for k, v in (extra or {}).items() if k not in config})
    # contiguous copies on the CPU: safetensors refuses views and tensors sharing memory
    tensors = {k: v.detach().to("cpu", copy=True).contiguous()
               for k, v in model.state_dict().items()}
    atomic_write_bytes(directory / WEIGHTS_NAME, safetensors_torch.save(
        tensors, metadata={"format": "pt", "effcn_model": model.model_name}))
    write_json(directory / CONFIG_NAME, config)
    return directory


def check_output_folder(directory: Path, force: bool) -> None:
    """Refuse a file, or a non-empty folder unless ``force``."""
    if directory.exists() and not directory.is_dir():
        raise EffcnError(f"{directory} is a file; choose a folder for --out.")
    if not force and directory.is_dir() and any(directory.iterdir()):
        raise EffcnError(f"{directory} is not empty; choose another --out folder, or pass "
                         f"--force to overwrite it.")


# --------------------------------------------------------------------------------- reading
def from_pretrained(folder_or_hub_id: str | Path, device: str | torch.device = "cpu",
                    revision: str | None = None) -> torch.nn.Module:
    """The model of a pretrained folder, or of a Hub id ("user/name", with huggingface_hub
    installed), in eval mode on ``device``."""
    return load_pretrained(folder_or_hub_id, device, revision).model


def load_pretrained(folder_or_hub_id: str | Path, device: str | torch.device = "cpu",
                    revision: str | None = None) -> Pretrained:
    """``from_pretrained`` with the config.json it read (class names, run config, ...)."""
    folder = resolve_folder(folder_or_hub_id, revision)
    config = read_config(folder)
    model = build_model(config, folder / WEIGHTS_NAME)
    load_weights(model, folder / WEIGHTS_NAME)
    return Pretrained(model.to(device).eval(), config, folder)


def resolve_folder(folder_or_hub_id: str | Path, revision: str | None = None,
                   **download_args) -> Path:
    """A local pretrained folder as it is; a Hub id ("user/name", not an existing path)
    downloaded with huggingface_hub.snapshot_download (its cache, ``download_args``)."""
    path = Path(folder_or_hub_id)
    if path.is_dir():
        if not is_pretrained_folder(path):
            raise EffcnError(f"{path} is not a pretrained folder (it needs {CONFIG_NAME} and "
                             f"{WEIGHTS_NAME}); write one with effcn publish.")
        return path
    if not HUB_ID.match(str(folder_or_hub_id)):
        raise EffcnError(f"{folder_or_hub_id} is neither a folder nor a Hub id (user/name); "
                         f"pass a folder written by effcn publish.")
    try:
        import huggingface_hub
    except ImportError:
        raise EffcnError(f"{folder_or_hub_id} is not a local folder, and downloading it from "
                         f"the Hugging Face Hub needs huggingface_hub: pip install "
                         f"'effcn[hub]'.") from None
    try:
        folder = Path(huggingface_hub.snapshot_download(
            str(folder_or_hub_id), revision=revision,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, "README.md"], **download_args))
    except Exception as e:  # noqa: BLE001  (the hub's errors are many: network, auth, not found)
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise EffcnError(f"could not download {folder_or_hub_id} from the Hugging Face Hub "
                         f"({reason}); check the id and the network, or download the folder "
                         f"and pass its path.") from None
    if not is_pretrained_folder(folder):
        raise EffcnError(f"the Hub repository {folder_or_hub_id} has no {CONFIG_NAME} and "
                         f"{WEIGHTS_NAME}, so it is not an effcn model; check the id.")
    return folder


def read_config(folder: Path) -> dict:
    """config.json, plain JSON, every declared size bounded (a ConfigError otherwise)."""
    path = folder / CONFIG_NAME
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is larger than {MAX_CONFIG_BYTES >> 20} MiB; a pretrained "
                          f"folder's config.json is a few kilobytes, so it was not read.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ConfigError(f"{path} is not valid JSON ({str(e)[:120] or 'nested too deeply'}); "
                          f"re-create the folder with effcn publish.") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_name"), str) \
            or not isinstance(config.get("model_args"), dict):
        raise ConfigError(f"{path} names no model (it needs \"model_name\" and a "
                          f"\"model_args\" mapping); re-create the folder with effcn publish.")
    _check_sizes(config["model_args"], f"{path}: model_args")
    divisor = config.setdefault("pixel_divisor", 255.0)
    if not isinstance(divisor, (int, float)) or not math.isfinite(divisor) or divisor <= 0:
        raise ConfigError(f"{path}: pixel_divisor must be a positive number, got {divisor!r}.")
    names = config.get("class_names") or []
    if not isinstance(names, list) or len(names) > MAX_SIZE or \
            any(not isinstance(n, str) or len(n) > MAX_NAME for n in names):
        raise ConfigError(f"{path}: class_names must be a list of at most {MAX_SIZE} strings of "
                          f"at most {MAX_NAME} characters.")
    return config


def _check_sizes(value, where: str) -> None:
    """Every integer at most MAX_SIZE in size, every list at most MAX_LIST long, only plain
    values: checked before a model is built from ``value``."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if abs(value) > MAX_SIZE:
            raise ConfigError(f"{where} is {value}, larger than effcn allows ({MAX_SIZE}); "
                              f"this config.json was not written by effcn publish, do not use it.")
    elif isinstance(value, float):
        if not math.isfinite(value) or abs(value) > MAX_SIZE:
            raise ConfigError(f"{where} is {value}, not a finite number of at most {MAX_SIZE}; "
                              f"this config.json was not written by effcn publish, do not use it.")
    elif isinstance(value, str):
        if len(value) > MAX_NAME:
            raise ConfigError(f"{where} is a string of {len(value)} characters (at most "
                              f"{MAX_NAME}); this config.json was not written by effcn publish.")
    elif isinstance(value, (list, dict)):
        if len(value) > MAX_LIST:
            raise ConfigError(f"{where} has {len(value)} entries (at most {MAX_LIST}); this "
                              f"config.json was not written by effcn publish, do not use it.")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            _check_sizes(item, f"{where}.{key}")
    else:
        raise ConfigError(f"{where} is a {type(value).__name__}, not a plain JSON value.")


def _as_tuples(value):
    """JSON lists -> tuples, as the dataclass configs hold them."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def build_model(config: dict, weights: Path | None = None) -> torch.nn.Module:
    """The network config.json describes, with random weights, once ``check_model`` passed."""
    check_model(config, weights)
    args = {k: _as_tuples(v) for k, v in config["model_args"].items()}
    model = create_model(config["model_name"], **args)
    config["class_names"] = class_names_or_indices(config.get("class_names"),
                                                   model.config.num_classes)
    return model


def check_model(config: dict, weights: Path | None = None) -> None:
    """Build config.json's network on the meta device (no memory; its sizes already bounded
    by read_config): its parameter count is bounded and, given ``weights``, its tensor names
    and shapes must be those of the file's header."""
    name, args = config["model_name"], {k: _as_tuples(v) for k, v in config["model_args"].items()}
    try:
        with torch.device("meta"):
            meta = create_model(name, **args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.json does not describe a valid {name!r} ({e}); re-create "
                          f"the folder with effcn publish.") from None
    shapes = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    total = sum(math.prod(s) for s in shapes.values())
    if total > MAX_PARAMETERS:
        raise ConfigError(f"config.json describes a {name!r} of {total:,} numbers, more than "
                          f"effcn loads ({MAX_PARAMETERS:,}); do not use this folder.")
    if weights is not None:
        _check_shapes(shapes, weights)
    names, num_classes = config.get("class_names") or [], meta.config.num_classes
    if names and len(names) != num_classes:
        raise ConfigError(f"config.json lists {len(names)} class names for a model of "
                          f"{num_classes} classes; re-create the folder with effcn publish.")


def _check_shapes(expected: dict[str, tuple], weights: Path) -> None:
    """The file's tensors (names and shapes, read from its header) are the model's."""
    found = _header_shapes(weights)
    for key, shape in expected.items():
        if key not in found:
            raise CheckpointError(f"{weights} has no tensor {key!r} of shape {shape}, which the "
                                  f"model in config.json needs; the two files do not belong "
                                  f"together.")
        if found[key] != shape:
            raise CheckpointError(f"tensor {key!r} has shape {found[key]} in {weights} but the "
                                  f"model in config.json expects {shape}; the two files do not "
                                  f"belong together.")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise CheckpointError(f"{weights} holds tensor(s) the model in config.json does not "
                              f"have ({', '.join(extra[:5])}); the two files do not belong "
                              f"together.")


def _header_shapes(weights: Path) -> dict[str, tuple]:
    """{name: shape} from a safetensors header (nothing else is read)."""
    _safetensors()  # the one message when it is missing
    from safetensors import safe_open
    try:
        with safe_open(str(weights), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001  (safetensors raises its own SafetensorError)
        raise CheckpointError(f"{weights} is not a readable safetensors file "
                              f"({str(e).splitlines()[0][:120]}); re-create the folder with "
                              f"effcn publish.") from None


def load_weights(model: torch.nn.Module, weights: Path) -> None:
    """Load a safetensors file into ``model`` (names and shapes must match exactly)."""
    _check_shapes({k: tuple(v.shape) for k, v in model.state_dict().items()}, weights)
    state = _safetensors().load_file(str(weights))
    model.load_state_dict(state)


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise EffcnError("pretrained folders (model.safetensors) need the safetensors package: "
                         "pip install 'effcn[hub]'.") from None
    return safetensors.torch


# ------------------------------------------------------------------- huggingface_hub's mixin
def __getattr__(name: str):
    if name == "EffcnHubModel":
        return _hub_model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_HUB_MODEL = None


def _hub_model_class():
    """EffcnHubModel, defined on first use (huggingface_hub is optional)."""
    global _HUB_MODEL
    if _HUB_MODEL is not None:
        return _HUB_MODEL
    try:
        from huggingface_hub import PyTorchModelHubMixin
    except ImportError:
        raise EffcnError("EffcnHubModel needs huggingface_hub: pip install 'effcn[hub]'.") from None

    class EffcnHubModel(torch.nn.Module, PyTorchModelHubMixin, library_name="effcn",
                        tags=["capsule-networks", "image-classification"]):
        """An effcn network behind PyTorchModelHubMixin: ``from_pretrained`` reads a pretrained
        folder or Hub id (bounded and strict, as effcn.from_pretrained), ``save_pretrained``
        writes one, ``forward`` is the network's. The network itself: ``.model``."""

        def __init__(self, model_name: str, model_args: dict | None = None, **config):
            super().__init__()
            self.pretrained_config = {**config, "model_name": model_name,
                                      "model_args": dict(model_args or {})}
            _check_sizes(self.pretrained_config["model_args"], "model_args")
            self.model = build_model(self.pretrained_config)

        def forward(self, images: torch.Tensor):
            return self.model(images)

        @classmethod
        def _from_pretrained(cls, *, model_id, revision, cache_dir, force_download,
                             local_files_only, token, map_location="cpu", strict=True,
                             **model_kwargs):
            folder = resolve_folder(model_id, revision, cache_dir=cache_dir,
                                    force_download=force_download,
                                    local_files_only=local_files_only, token=token)
            config = read_config(folder)
            check_model(config, folder / WEIGHTS_NAME)  # before anything is allocated
            hub = cls(**config)
            load_weights(hub.model, folder / WEIGHTS_NAME)
            return hub.to(map_location).eval()

        def _save_pretrained(self, save_directory) -> None:
            c = self.pretrained_config
            save_pretrained(self.model, save_directory, c.get("class_names", ()),
                            c.get("pixel_divisor", 255.0), extra=c, force=True)

    EffcnHubModel.__module__ = __name__
    _HUB_MODEL = EffcnHubModel
    return EffcnHubModel
