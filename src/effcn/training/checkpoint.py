"""Self-describing checkpoints, written atomically and loaded without executing code.

A checkpoint is a dict saved with ``torch.save`` and read back with ``weights_only=True`` (so a
crafted pickle is refused): format tag, model name and config (enough to rebuild the model alone,
as in nanoGPT), weights, optimizer and scheduler state, epoch, best validation figures and the
run's resolved config. Writes go to a temporary file in the same folder, then ``os.replace``.

A run's files must agree: a checkpoint inside a run (best.pt, last.pt, step.pt, epoch_NNN.pt)
belongs to it only when it holds the model (name and tensor shapes), dataset and task that the
run's config.yaml describes (``check_belongs``); a checkpoint from elsewhere may be evaluated in a
run when it is compatible (the same tensors and task, ``check_compatible``), and is then named.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..io import atomic_write_bytes

FORMAT = "effcn-checkpoint-v1"
# Model config fields that earlier versions stored but nothing read; ignored when rebuilding.
REMOVED_MODEL_FIELDS = ("primary_caps",)


def checkpoint_state(model, config, epoch: int, class_names=(), optimizer=None, scheduler=None,
                     best: dict | None = None, ema=None, **extra) -> dict:
    """The contents of every effcn checkpoint, built in this one place.

    Always: the model's registry name and config (enough to rebuild it), its weights, the epoch,
    the run's resolved config (a Config or its dict) and the class names. A resumable checkpoint
    (last.pt, best.pt) adds optimizer and scheduler state and the best validation figures; a run
    with train.ema_decay adds the averaged weights ("ema", the ones evaluated); ``extra`` holds
    anything else (e.g. ``imported_from``)."""
    from ..models import model_config_dict
    state = {"model_name": model.model_name, "model_config": model_config_dict(model),
             "model": model.state_dict(), "epoch": epoch,
             "config": config if isinstance(config, dict) else config.to_dict(),
             "class_names": list(class_names)}
    if ema is not None:
        state["ema"] = ema.state_dict()
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    if best is not None:
        state["best"] = best
    return {**state, **extra}


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Save a checkpoint dict (see module docstring) atomically."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location="cpu", expect_model: str | None = None,
                    mmap: bool = False) -> dict:
    """Load a checkpoint safely; clear errors for missing, corrupt, unsafe or foreign files.
    ``mmap``: map the tensors instead of reading them (cheap when only shapes are looked at)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; point at a run directory "
                              f"or a .pt file written by effcn.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint {path} was refused: it contains objects other than tensors and plain "
            f"data ({str(e).splitlines()[0][:120]}); effcn never executes code from a file, so "
            f"re-create the checkpoint with effcn.") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated "
                              f"({str(e).splitlines()[0][:120]}); use another checkpoint "
                              f"(e.g. last.pt instead of best.pt) or retrain.") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an effcn checkpoint (no {FORMAT!r} tag); "
                              f"load weights from a run trained with effcn.")
    if expect_model is not None and state["model_name"] != expect_model:
        raise CheckpointError(f"checkpoint {path} holds model {state['model_name']!r}, not "
                              f"{expect_model!r}; pick a checkpoint of that model or change "
                              f"model.name.")
    return state


def load_model_weights(model: torch.nn.Module, state: dict, path: str | Path = "checkpoint",
                       weights: str = "eval") -> None:
    """Load a checkpoint's weights into ``model``; a shape or key mismatch is a CheckpointError.

    ``weights="eval"``: the weights a run is evaluated with, the EMA (``state["ema"]``) when the
    run kept one, else ``state["model"]``; ``"raw"``: the optimizer's weights (resume)."""
    key = "ema" if weights == "eval" and state.get("ema") is not None else "model"
    try:
        model.load_state_dict(state[key])
    except RuntimeError as e:
        first = str(e).splitlines()
        raise CheckpointError(f"checkpoint {path} does not fit model {state.get('model_name')!r} "
                              f"with this config ({' '.join(first[:2])[:200]}); use the model "
                              f"config stored in the checkpoint.") from None


def class_names_of(state: dict, num_classes: int) -> list[str]:
    """The class names a checkpoint stores, or "0", "1", ... when it stores none."""
    from ..models.registry import class_names_or_indices
    return class_names_or_indices(state.get("class_names"), num_classes)


def model_from_checkpoint(path: str | Path, map_location="cpu"):
    """Rebuild the model from the checkpoint alone; returns (model, state)."""
    state = load_checkpoint(path, map_location=map_location)
    return model_from_state(state, path), state


def model_from_state(state: dict, path: str | Path = "checkpoint") -> torch.nn.Module:
    """The model a loaded checkpoint describes, with its (evaluated) weights."""
    from ..models import create_model
    model = create_model(state["model_name"], **_model_args(state))
    load_model_weights(model, state, path)
    return model


def _model_args(state: dict) -> dict:
    return {k: v for k, v in state["model_config"].items() if k not in REMOVED_MODEL_FIELDS}


# ------------------------------------------------------------ a checkpoint and its run's config
@dataclass
class _Trained:
    """What a checkpoint holds, or what a run's config describes: enough to tell them apart."""
    model: str
    args: dict                  # the model's config fields
    shapes: dict                # {tensor name: shape} of the model's state_dict
    dataset: str | None         # None: not recorded
    task: str | None

    @classmethod
    def of_checkpoint(cls, state: dict) -> "_Trained":
        from .config_io import config_from_dict
        saved = state.get("config")
        config = config_from_dict(saved, announce=False) if isinstance(saved, dict) else None
        return cls(state["model_name"], _model_args(state),
                   {k: tuple(v.shape) for k, v in state["model"].items()},
                   config.data.dataset if config else None, config.task.name if config else None)

    @classmethod
    def of_config(cls, config) -> "_Trained":
        """Built on the meta device: shapes without memory."""
        from ..models import create_model, model_config_dict
        with torch.device("meta"):
            model = create_model(config.model.name, **config.model.args)
        return cls(config.model.name, model_config_dict(model),
                   {k: tuple(v.shape) for k, v in model.state_dict().items()},
                   config.data.dataset, config.task.name)

    def same_task(self, other: "_Trained") -> bool:
        return None in (self.task, other.task) or self.task == other.task

    def same_data(self, other: "_Trained") -> bool:
        return None in (self.dataset, other.dataset) or self.dataset == other.dataset

    def describe(self, other: "_Trained", trained: str = "a {} trained on") -> str:
        """e.g. "a cnn_mnist trained on fashion_mnist" (``trained``: the words around the model,
        "{} on" for a config); the model args that differ from ``other``'s (same model name,
        other shapes) and the task when the tasks differ."""
        what = self.model
        if self.model == other.model and self.shapes != other.shapes:
            differ = [f"{k}={_plain(v)}" for k, v in self.args.items()
                      if k in other.args and _plain(v) != _plain(other.args[k])]
            what += f" ({', '.join(differ)})" if differ else ""
        before, _, after = trained.partition("{}")
        if before == "a " and what[0] in "aeiou":
            before = "an "
        text = before + what + (f"{after} {self.dataset}" if self.dataset is not None else "")
        if not self.same_task(other):
            text += f" ({self.task} task)"
        return text


def _plain(value):
    return tuple(value) if isinstance(value, list) else value


def _shape_difference(held: dict, built: dict) -> str:
    """The first tensor whose shape differs, as "name: (..) in the checkpoint, (..) in the
    model" ("" when every shape agrees)."""
    for name in sorted(set(held) | set(built)):
        a, b = held.get(name), built.get(name)
        if a != b:
            return (f"{name}: {'absent' if a is None else a} in the checkpoint, "
                    f"{'absent' if b is None else b} in the model")
    return ""


def checkpoint_disagreement(state: dict, config, path: str | Path,
                            config_path: str | Path) -> str | None:
    """The one sentence saying why checkpoint ``state`` (read from ``path``) does not belong to
    the run whose config (``config``, read from ``config_path``) describes another model (name
    or tensor shapes), dataset or task; None when it belongs."""
    held, described = _Trained.of_checkpoint(state), _Trained.of_config(config)
    if (held.model == described.model and held.shapes == described.shapes
            and held.same_data(described) and held.same_task(described)):
        return None
    return (f"{path} holds {held.describe(described)}, but {config_path} describes "
            f"{described.describe(held, '{} on')}; the checkpoint does not belong "
            f"to this run: put back the run's own checkpoint, or open the run it came from.")


def check_belongs(state: dict, config, path: str | Path, config_path: str | Path) -> None:
    """Refuse (CheckpointError, one sentence) a checkpoint of another model, dataset or task
    than the run's config describes: see ``checkpoint_disagreement``."""
    refusal = checkpoint_disagreement(state, config, path, config_path)
    if refusal:
        raise CheckpointError(refusal)


def check_compatible(state: dict, config, path: str | Path, config_path: str | Path) -> str:
    """A checkpoint from elsewhere, evaluated in the run whose config is ``config``: refused
    (CheckpointError) unless its tensors (the architecture, the number of classes) and task
    are those the config describes; returns the note naming it (what it holds, the config it is
    used with)."""
    held, described = _Trained.of_checkpoint(state), _Trained.of_config(config)
    if held.shapes != described.shapes:
        raise CheckpointError(f"{path} holds {held.describe(described)} whose tensors do not fit "
                              f"the {described.model} of {config_path} "
                              f"({_shape_difference(held.shapes, described.shapes)}); pass a "
                              f"checkpoint of the same architecture and task, or open the run "
                              f"it came from.")
    if not held.same_task(described):
        raise CheckpointError(f"{path} holds {held.describe(described)}, but {config_path} "
                              f"describes the {described.task} task; pass a checkpoint of the "
                              f"same architecture and task, or open the run it came from.")
    return (f"{path} is not this run's own checkpoint ({held.describe(described)}); it is used "
            f"with {config_path}")
