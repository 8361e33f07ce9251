"""Reading and checking configs: YAML files, ``--set key=value`` overrides, validation, and the
translation of earlier versions' task fields.

Defaults <- YAML file <- overrides, then validated: unknown keys, wrong types and out-of-range
values are ConfigErrors with one sentence that names the key and the fix. The schema (the
dataclasses) is config.py; the model's args are checked against its preset's config and the
task's args against the task's ``Args`` (the same code, ``build_args``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import sys
import typing
from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError
from .config import Config

CHOICES = {
    "optim.name": ("adam", "adamw", "sgd"),
    "optim.eps_placement": ("keras", "pytorch"),
    "schedule.name": ("exp_decay", "constant", "step", "cosine", "onecycle", "plateau"),
    "train.amp": ("auto", "bf16", "off"),
    "data.protocol": ("honest", "authors"),
    "data.fit": ("resize", "pad"),
    "train.test_amp": ("auto", "bf16", "off"),
    "train.compile_mode": ("default", "reduce-overhead", "max-autotune"),
    "train.cuda_graph": ("auto", "on", "off"),
}
POSITIVE = ("optim.lr", "data.pixel_divisor", "train.epochs", "train.batch_size", "train.eval_batch_size",
            "train.log_every", "schedule.decay", "schedule.step_size", "schedule.factor",
            "data.val_size", "data.max_pixels", "data.test_fraction")  # the validation split picks the best checkpoint: it cannot be empty
NON_NEGATIVE = ("optim.weight_decay", "optim.momentum", "optim.eps", "schedule.min_lr",
                "schedule.gamma", "schedule.patience", "data.train_subset",
                "data.image_size", "data.channels",
                "train.recon_weight", "train.ema_decay", "run.recon_every", "run.checkpoint_every",
                "run.checkpoint_every_steps")

# Earlier versions' task fields (before the task section) -> (task, its arg, whether a non-zero
# value made the old version pick that task). Kept so that old configs, run directories and
# --set lines still load: see translate_legacy.
LEGACY_TASK_FIELDS = {
    "data.multimnist_partners": ("multimnist", "partners", False),
    "data.multimnist_test_digits": ("multimnist", "test_digits", False),
    "data.multimnist_same_label": ("multimnist", "same_label", False),
    "data.multimnist_epoch_pairs": ("multimnist", "epoch_pairs", False),
    "data.multimnist_test_style": ("multimnist", "test_style", False),
    "data.digits": ("numbers", "digits", False),
    "data.numbers_epoch_images": ("numbers", "epoch_images", False),
    "data.labeled": ("semi_supervised", "labeled", True),
    "data.labeled_seed": ("semi_supervised", "labeled_seed", False),
    "train.labeled_batch_size": ("semi_supervised", "labeled_batch_size", True),
    "train.unlabeled_recon_weight": ("semi_supervised", "unlabeled_recon_weight", True),
    "train.unlabeled_recon_mask": ("semi_supervised", "unlabeled_recon_mask", False),
    "train.consistency_weight": ("semi_supervised", "consistency_weight", True),
    "train.consistency_on": ("semi_supervised", "consistency_on", False),
}


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
    config, notes = Config(), []
    if path is not None:
        notes.append(apply_dict(config, load_yaml(path), source=str(path)))
    notes.append(_apply_overrides(config, overrides))
    _announce(notes)
    validate(config)
    return config


def apply_overrides(config: Config, overrides: list[str] = ()) -> Config:
    """Apply ``section.key=value`` strings (``--set``) to ``config`` in place, then validate it.

    The one place overrides are applied: train, resume, eval and sweeps all come here."""
    _announce([_apply_overrides(config, overrides)])
    validate(config)
    return config


def config_from_dict(data: dict, announce: bool = True) -> Config:
    """Rebuild a Config from ``Config.to_dict()`` output (e.g. a checkpoint's, a run's
    config.yaml), of this version or an earlier one; ``announce=False``: without the line
    about an earlier version's fields (a config read only to be compared)."""
    config = Config()
    note = apply_dict(config, data, source="saved config")
    if announce:
        _announce([note])
    validate(config)
    return config


def apply_dict(config: Config, data: dict, source: str) -> Optional[str]:
    """Apply a mapping of sections to ``config`` in place (not validated); earlier versions'
    task fields are translated (see translate_legacy, whose note this returns)."""
    entries = []
    for section, values in data.items():
        if not isinstance(values, dict):
            _section(config, section)  # unknown section -> error first
            raise ConfigError(f"{source}: section {section!r} must be a mapping of keys, got "
                              f"{values!r}.")
        entries += [(f"{section}.{key}", value) for key, value in values.items()]
    return _apply_entries(config, entries, source)


def _apply_overrides(config: Config, overrides: list[str]) -> Optional[str]:
    entries = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form section.key=value, e.g. "
                              f"train.epochs=10.")
        entries.append((key.strip(), parse_scalar(raw)))
    return _apply_entries(config, entries, "--set")


def _apply_entries(config: Config, entries: list, source: str) -> Optional[str]:
    """Set ``(section.key, value)`` pairs of one source; its old task fields are translated."""
    legacy = [(key, value) for key, value in entries if key in LEGACY_TASK_FIELDS]
    for key, value in entries:
        if key not in LEGACY_TASK_FIELDS:
            set_value(config, key, value, source=source)
    keys = [key for key, _ in entries]
    return translate_legacy(config, legacy, source,
                            names_task=any(k.split(".")[0] == "task" for k in keys),
                            sets_dataset="data.dataset" in keys)


def translate_legacy(config: Config, legacy: list, source: str, names_task: bool,
                     sets_dataset: bool) -> Optional[str]:
    """Earlier versions' task fields ``legacy`` ((old key, value) pairs of one source) moved into
    ``config.task``; a note saying what was done, or None when the source is of this version.

    The old version picked the task: by data.dataset (a dataset that a task needs), else the
    semi-supervised task when one of its switches was non-zero, else classification. So, when the
    source names no task and the task is classification, it is picked the same way; then the old
    fields of the task move to task.args, those of other tasks at their defaults are dropped, and
    other tasks' set fields are ignored as they were (a semi-supervised switch refused as it
    was)."""
    from .tasks import TASKS, task_of_dataset
    picked = None
    if not names_task and config.task.name == "classification":
        owner = task_of_dataset(config.data.dataset) if sets_dataset else None
        switches = any(LEGACY_TASK_FIELDS[key][2] and _legacy_value(key, value, source)
                       for key, value in legacy)
        picked = owner or ("semi_supervised" if switches else None)
    if picked is None and not legacy:
        return None
    if picked is not None:
        config.task.name = picked
    name, moved, ignored = config.task.name, [], []
    for key, value in legacy:
        owner, arg, switch = LEGACY_TASK_FIELDS[key]
        value = _legacy_value(key, value, source)
        if owner == name:
            config.task.args[arg] = value
            moved.append(f"{key} -> task.args.{arg}")
        elif value == getattr(TASKS[owner].Args(), arg):
            continue  # an earlier version's resolved config holds every field at its default
        elif switch:
            raise ConfigError(f"{source}: {key}={value!r} is a setting of the semi_supervised "
                              f"task (task.args.{arg}), not of {name}; drop it.")
        else:
            ignored.append(f"{key}={value!r}")
    return (f"{source}: task.name={name}" + (f", {', '.join(moved)}" if moved else "")
            + (f" (ignored, as before: {', '.join(ignored)})" if ignored else ""))


def _legacy_value(key: str, value: Any, source: str) -> Any:
    """An old field's value, typed as its task arg."""
    from .tasks import TASKS
    owner, arg, _ = LEGACY_TASK_FIELDS[key]
    return coerce(value, type(getattr(TASKS[owner].Args(), arg)), key, source)


def _announce(notes: list) -> None:
    """One line on stderr for the translations of one load (nothing when there were none)."""
    notes = [note for note in notes if note]
    if notes:
        print(f"effcn: read earlier task fields as the task section ({'; '.join(notes)}); "
              f"write task: {{name, args}} instead (docs: training, Tasks).", file=sys.stderr)


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
    build_args(default_config(config.model.name), config.model.args, "model.args",
               config.model.name)
    from .tasks import check_task_dataset, task_class  # the task name, its args, its dataset
    task = task_class(config)
    build_args(task.Args(), config.task.args, "task.args", f"{task.name} task")
    check_task_dataset(config)
    task.check_config(config)  # last: a task may check the model's config too


def build_args(defaults, args: dict, prefix: str, what: str):
    """``defaults`` (a dataclass instance: a model preset's config, a task's Args) with the
    overrides ``args`` applied, each coerced in place to its field's type. An unknown key ("did
    you mean"), a wrong type or a value the dataclass refuses is one ConfigError naming
    ``prefix`` (model.args, task.args) and ``what`` (the model, the task)."""
    valid = [f.name for f in dataclasses.fields(defaults)]
    for key, value in list(args.items()):
        if key not in valid:
            hint = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {prefix}.{hint[0]}? " if hint else ""
            known = (f"valid keys are: {', '.join(sorted(valid))}" if valid
                     else f"the {what} takes no {prefix}")
            raise ConfigError(f"unknown config key {prefix}.{key}; {hint}{known}.")
        args[key] = coerce(value, type(getattr(defaults, key)), f"{prefix}.{key}")
    try:
        return dataclasses.replace(defaults, **args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix} do not make a valid {what}: {e}.") from None


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
