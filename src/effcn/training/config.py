"""Experiment configuration: dataclasses, YAML files, ``--set key=value`` overrides, validation.

A config is six sections (model, data, optim, schedule, train, run). Every field has a type and a
default; unknown keys, wrong types and out-of-range values are ConfigErrors with one sentence that
names the key and the fix. The resolved config is saved with every run.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError


@dataclass
class ModelSection:
    name: str = "efficient_capsnet_mnist"   # a registered model (effcn.models.list_models())
    args: dict = field(default_factory=dict)  # overrides of the preset's config fields


@dataclass
class DataSection:
    dataset: str = "mnist"                  # a registered dataset (effcn datasets)
    root: Optional[str] = None              # folder with the files; None: $EFFCN_DATA, cache
    download: bool = False
    val_size: int = 5000                    # validation images carved out of the training set
    protocol: str = "honest"                # honest (select on val) | authors (train on all,
                                            # select on TEST: labelled test-selected everywhere)
    split_seed: int = 0                     # fixes which training images are validation
    train_subset: int = 0                   # >0: train on this many images only (CPU budgets)
    labeled: int = 0                        # >0: only this many training images keep their
                                            # labels (class-balanced; semi-supervised task)
    labeled_seed: int = 0                   # fixes which training images keep their labels
    augment: str = "paper"                  # paper | none | parts joined by '+', e.g. rotate+erase
    pixel_divisor: float = 255.0            # uint8 -> float: x / this (the authors' MNIST: 256)
    multimnist_partners: int = 1000         # MultiMNIST test set: partners per test digit
    multimnist_test_digits: int = 0         # MultiMNIST test set: first N test digits (0: all)
    multimnist_same_label: bool = True      # training partners: any other image (the authors')
                                            # or false: only digits of another label
    multimnist_epoch_pairs: int = 0         # pairs per epoch (the authors': 600000); 0: one pass
    multimnist_test_style: str = "authors"  # authors | resampled (effcn's earlier test pairs)
    digits: int = 2                         # mnist_numbers: digits per image (1, 2 or 3)
    numbers_epoch_images: int = 0           # mnist_numbers: numbers per epoch; 0: digits // k


@dataclass
class OptimSection:
    name: str = "adam"                      # adam | adamw | sgd
    lr: float = 5e-4
    weight_decay: float = 0.0
    momentum: float = 0.9                   # sgd only
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-7                       # Keras' Adam default (PyTorch's is 1e-8)
    eps_placement: str = "keras"            # keras (the authors': see optim.keras_epsilon) | pytorch
    fused: bool = True                      # adam/adamw: one fused kernel per step (5x faster on CPU)


@dataclass
class ScheduleSection:
    # exp_decay (the paper: lr = max(lr0 * decay^epoch, min_lr)) | constant | step | cosine |
    # onecycle (per batch, peak = optim.lr) | plateau (on validation accuracy)
    name: str = "exp_decay"
    decay: float = 0.97
    min_lr: float = 5e-5
    step_size: int = 30                     # step: epochs between decays
    gamma: float = 0.1                      # step: decay factor
    pct_start: float = 0.3                  # onecycle: fraction of steps spent warming up
    factor: float = 0.5                     # plateau: lr multiplier
    patience: int = 5                       # plateau: epochs without improvement


@dataclass
class TrainSection:
    epochs: int = 150
    batch_size: int = 16
    eval_batch_size: int = 500
    recon_weight: float = 0.392             # reconstruction loss weight (0.392 * MSE)
    # Semi-supervised terms (training/tasks/semi_supervised.py; 0: off):
    labeled_batch_size: int = 0             # labeled draws per batch (0: train.batch_size)
    unlabeled_recon_weight: float = 0.0     # MSE of the unlabeled images' reconstructions
    unlabeled_recon_mask: str = "predicted" # predicted (the longest capsule) | none (all capsules)
    consistency_weight: float = 0.0         # MSE between two augmentations' outputs of an image
    consistency_on: str = "lengths"         # lengths | capsules
    seed: int = 42
    device: str = "auto"                    # auto | cpu | cuda | cuda:N
    log_every: int = 50                     # batches between metric flushes / progress updates
    progress: bool = True                   # progress bar (tqdm when installed)
    skip_nonfinite: bool = False            # skip steps with NaN/inf loss instead of stopping
    ema_decay: float = 0.0                  # >0: EMA of the weights, e.g. 0.999 (see training/ema.py)
    # The fast path (training/fastpath.py; measured in BENCHMARKS.md):
    amp: str = "auto"                       # auto (bf16 on CUDA and bf16-capable CPUs) | bf16 | off
    test_amp: str = "off"                   # the final test's precision: off (fp32) | bf16 | auto
    monitor_test: bool = False              # also evaluate the test split every epoch (logged,
                                            # never selects): the authors' selection, same run
    channels_last: bool = True              # NHWC layout of weights and inputs
    compile: bool = False                   # torch.compile the model (falls back to eager)
    compile_mode: str = "default"           # default | reduce-overhead (CUDA graphs) | max-autotune
    sync_batchnorm: bool = False            # under torchrun on CUDA: BN statistics of the global batch


@dataclass
class RunSection:
    dir: str = "runs"                       # parent folder of run directories
    name: str = ""                          # run directory name; default <config>-<timestamp>
    tensorboard: bool = False               # write TensorBoard events to <run>/tensorboard
    recon_every: int = 0                    # >0: save a reconstruction grid every N epochs (+ GIF)
    checkpoint_every: int = 0               # >0: keep checkpoints/epoch_NNN.pt every N epochs
    checkpoint_every_steps: int = 0         # >0: a resumable checkpoints/step.pt every N batches
    # Experiment trackers (training/trackers.py), each an optional extra:
    wandb: bool = False                     # log to Weights & Biases (WANDB_MODE=offline works)
    wandb_project: str = "effcn"
    wandb_name: str = ""                    # the W&B run's name; default: the run directory's
    wandb_tags: tuple = ()                  # e.g. [mnist, baseline]
    mlflow: str = ""                        # MLflow tracking URI, e.g. file:///path/mlruns; "": off
    mlflow_experiment: str = "effcn"        # the MLflow experiment (created when missing)


@dataclass
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    run: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "optim.name": ("adam", "adamw", "sgd"),
    "optim.eps_placement": ("keras", "pytorch"),
    "schedule.name": ("exp_decay", "constant", "step", "cosine", "onecycle", "plateau"),
    "train.amp": ("auto", "bf16", "off"),
    "data.multimnist_test_style": ("authors", "resampled"),
    "data.protocol": ("honest", "authors"),
    "train.test_amp": ("auto", "bf16", "off"),
    "train.compile_mode": ("default", "reduce-overhead", "max-autotune"),
    "train.unlabeled_recon_mask": ("predicted", "none"),
    "train.consistency_on": ("lengths", "capsules"),
}
POSITIVE = ("optim.lr", "data.pixel_divisor", "train.epochs", "train.batch_size", "train.eval_batch_size",
            "train.log_every", "schedule.decay", "schedule.step_size", "schedule.factor",
            "data.val_size")  # the validation split picks the best checkpoint: it cannot be empty
NON_NEGATIVE = ("optim.weight_decay", "optim.momentum", "optim.eps", "schedule.min_lr",
                "schedule.gamma", "schedule.patience", "data.train_subset",
                "data.multimnist_test_digits", "data.multimnist_epoch_pairs",
                "data.numbers_epoch_images",
                "train.recon_weight", "train.ema_decay", "run.recon_every", "run.checkpoint_every",
                "run.checkpoint_every_steps", "data.labeled", "train.labeled_batch_size",
                "train.unlabeled_recon_weight", "train.consistency_weight")


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; clear errors for a missing file or bad YAML."""
    yaml = _yaml()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file "
                          f"(see the configs/ folder).")
    try:
        data = _yaml_load(yaml, path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]}); "
                          f"fix the syntax.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not "
                          f"{type(data).__name__}.")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults <- YAML file <- ``key=value`` overrides, then validated."""
    config = Config()
    if path is not None:
        apply_dict(config, load_yaml(path), source=str(path))
    apply_overrides(config, overrides)
    return config


def apply_overrides(config: Config, overrides: list[str] = ()) -> Config:
    """Apply ``section.key=value`` strings (``--set``) to ``config`` in place, then validate it.

    The one place overrides are applied: train, resume, eval and sweeps all come here."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form section.key=value, e.g. "
                              f"train.epochs=10.")
        set_value(config, key.strip(), parse_scalar(raw))
    validate(config)
    return config


def config_from_dict(data: dict) -> Config:
    """Rebuild a Config from ``Config.to_dict()`` output (e.g. a checkpoint's)."""
    config = Config()
    apply_dict(config, data, source="saved config")
    validate(config)
    return config


def apply_dict(config: Config, data: dict, source: str) -> None:
    for section, values in data.items():
        if not isinstance(values, dict):
            _section(config, section)  # unknown section -> error first
            raise ConfigError(f"{source}: section {section!r} must be a mapping of keys, got "
                              f"{values!r}.")
        for key, value in values.items():
            set_value(config, f"{section}.{key}", value, source=source)


def set_value(config: Config, dotted: str, value: Any, source: str = "--set") -> None:
    """Set ``section.key`` (or ``model.args.field``) with type checking."""
    parts = dotted.split(".")
    section = _section(config, parts[0])
    if len(parts) < 2:
        raise ConfigError(f"{source}: {dotted!r} names a section, not a key; use "
                          f"{parts[0]}.<key>=value.")
    fields = {f.name: f for f in dataclasses.fields(section)}
    key = parts[1]
    if key not in fields:
        valid = sorted(fields)
        hint = difflib.get_close_matches(key, valid, n=1)
        hint = f"did you mean {parts[0]}.{hint[0]}? " if hint else ""
        raise ConfigError(f"{source}: unknown config key {parts[0]}.{key}; {hint}valid keys in "
                          f"{parts[0]!r} are: {', '.join(valid)}.")
    ftype = _resolved_types(type(section))[key]
    if len(parts) > 2:
        if ftype is not dict:
            raise ConfigError(f"{source}: {parts[0]}.{key} has no sub-keys (got {dotted}).")
        getattr(section, key)[".".join(parts[2:])] = value
        return
    setattr(section, key, coerce(value, ftype, f"{parts[0]}.{key}", source))


def coerce(value: Any, ftype: Any, key: str, source: str = "--set") -> Any:
    """Convert ``value`` to the field type or raise a ConfigError naming the key."""
    origin, args = typing.get_origin(ftype), typing.get_args(ftype)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "")):
            return None
        ftype = next(a for a in args if a is not type(None))
    want = getattr(ftype, "__name__", str(ftype))

    def bad():
        return ConfigError(f"{source}: {key} expects {_article(want)}, got {value!r}; "
                           f"fix the value.")

    if ftype is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise bad()
    if ftype is int:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad() from None
        raise bad()
    if ftype is float:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                raise bad() from None
        raise bad()
    if ftype is str:
        if isinstance(value, (dict, list)):
            raise bad()
        return str(value)
    if ftype is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
        raise bad()
    if ftype is dict:
        if isinstance(value, dict):
            return dict(value)
        raise bad()
    raise bad()


def validate(config: Config) -> None:
    """Range and choice checks; the model args are checked by building the model's config."""
    flat = {f"{s}.{k}": v for s, sec in config.to_dict().items() for k, v in sec.items()}
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {flat[key]!r}.")
    for key in POSITIVE:
        if not flat[key] > 0:
            raise ConfigError(f"{key} must be positive, got {flat[key]!r}; fix the value.")
    for key in NON_NEGATIVE:
        if flat[key] < 0:
            raise ConfigError(f"{key} must not be negative, got {flat[key]!r}; fix the value.")
    if not 1 <= config.data.digits <= 3:
        raise ConfigError(f"data.digits must be 1, 2 or 3 (digits per mnist_numbers image: 10, "
                          f"100 or 1,000 classes), got {config.data.digits}.")
    if config.data.multimnist_partners < 1:
        raise ConfigError(f"data.multimnist_partners must be at least 1, got "
                          f"{config.data.multimnist_partners}.")
    if not 0 <= config.train.ema_decay < 1:
        raise ConfigError(f"train.ema_decay must be in [0, 1) (0: off), got "
                          f"{config.train.ema_decay}.")
    if config.schedule.name == "onecycle" and not 0 < config.schedule.pct_start < 1:
        raise ConfigError(f"schedule.pct_start must be in (0, 1), got {config.schedule.pct_start}.")
    if len(config.optim.betas) != 2 or not all(0 <= float(b) < 1 for b in config.optim.betas):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {config.optim.betas!r}.")
    if config.train.device != "auto" and not (config.train.device == "cpu" or
                                              config.train.device.startswith("cuda")):
        raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got "
                          f"{config.train.device!r}.")
    _validate_trackers(config)
    _validate_data(config)
    from ..models import default_config  # validates the model name, then its args
    preset = default_config(config.model.name)
    valid = {f.name: f for f in dataclasses.fields(preset)}
    for key, value in list(config.model.args.items()):
        if key not in valid:
            hint = difflib.get_close_matches(key, list(valid), n=1)
            hint = f"did you mean model.args.{hint[0]}? " if hint else ""
            raise ConfigError(f"unknown config key model.args.{key}; {hint}valid keys are: "
                              f"{', '.join(sorted(valid))}.")
        default = getattr(preset, key)
        config.model.args[key] = coerce(value, type(default), f"model.args.{key}")
    try:
        dataclasses.replace(preset, **config.model.args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.args do not make a valid {config.model.name}: {e}.") from None
    from .tasks import task_class
    task_class(config).check_config(config)  # last: a task may check the model's config too


def _validate_trackers(config: Config) -> None:
    """W&B tags are non-empty strings of at most 64 characters; names are never empty."""
    run = config.run
    run.wandb_tags = tuple(str(t) for t in run.wandb_tags)
    bad = [t for t in run.wandb_tags if not t.strip() or len(t) > 64]
    if bad:
        raise ConfigError(f"run.wandb_tags must be non-empty tags of at most 64 characters, got "
                          f"{bad[0]!r}; fix the tag.")
    if run.wandb and not run.wandb_project.strip():
        raise ConfigError("run.wandb=true needs a run.wandb_project; set one (default effcn).")
    if run.mlflow and not run.mlflow_experiment.strip():
        raise ConfigError("run.mlflow needs a run.mlflow_experiment; set one (default effcn).")


def _validate_data(config: Config) -> None:
    """data.dataset must be registered and data.augment parse, so a bad name fails when the
    config is loaded (a sweep before its first run), not when training starts."""
    from ..data import list_datasets
    from ..data.transforms import build_augment
    if config.data.dataset not in list_datasets():
        hint = difflib.get_close_matches(config.data.dataset, list_datasets(), n=1)
        hint = f"did you mean {hint[0]}? Otherwise " if hint else ""
        raise ConfigError(f"data.dataset={config.data.dataset!r} is not a known dataset; {hint}"
                          f"use one of {', '.join(list_datasets())}.")
    try:
        build_augment(config.data.augment)
    except ConfigError as e:
        raise ConfigError(f"data.augment={config.data.augment!r}: {e}") from None


def parse_scalar(raw: str) -> Any:
    """Parse an override value like YAML does ('10' -> 10, 'true' -> True, '[1,2]' -> list)."""
    raw = raw.strip()
    yaml = _yaml()
    try:
        return _yaml_load(yaml, raw) if raw else ""
    except yaml.YAMLError:
        return raw


def save_yaml(data: dict, path: str | Path) -> None:
    """Write a mapping as YAML (tuples as lists), atomically."""
    from ..io import atomic_write_text
    yaml = _yaml()
    atomic_write_text(path, yaml.safe_dump(_plain(data), sort_keys=False))


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _section(config: Config, name: str):
    names = [f.name for f in dataclasses.fields(config)]
    if name not in names:
        hint = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {hint[0]!r}? " if hint else ""
        raise ConfigError(f"unknown config section {name!r}; {hint}sections are: "
                          f"{', '.join(names)}.")
    return getattr(config, name)


def _resolved_types(cls) -> dict:
    return typing.get_type_hints(cls)


def _article(name: str) -> str:
    return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
            "tuple": "a list", "dict": "a mapping"}.get(name, name)


def _yaml():
    import yaml  # a core dependency; imported here so that `import effcn` stays light
    return yaml


@functools.lru_cache(maxsize=1)
def _yaml_loader():
    """yaml.SafeLoader, except that only true/false are booleans (YAML 1.2): YAML 1.1 also reads
    on/off/yes/no as booleans, which would turn ``train.amp=off`` into False."""
    yaml = _yaml()

    class Loader(yaml.SafeLoader):
        yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:bool"]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    Loader.add_implicit_resolver("tag:yaml.org,2002:bool",
                                 re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    return Loader


def _yaml_load(yaml, text: str):
    return yaml.load(text, Loader=_yaml_loader())
