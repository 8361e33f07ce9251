"""Self-describing checkpoints, written atomically and loaded without executing code.

A checkpoint is a dict saved with ``torch.save`` and read back with ``weights_only=True`` (so a
crafted pickle is refused): format tag, model name and config (enough to rebuild the model alone,
as in nanoGPT), weights, optimizer and scheduler state, epoch, best validation figures and the
run's resolved config. Writes go to a temporary file in the same folder, then ``os.replace``.
"""

from __future__ import annotations

import io
import pickle
import zipfile
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


def load_checkpoint(path: str | Path, map_location="cpu", expect_model: str | None = None) -> dict:
    """Load a checkpoint safely; clear errors for missing, corrupt, unsafe or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; point at a run directory "
                              f"or a .pt file written by effcn.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
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
    return [str(n) for n in state.get("class_names") or []] or \
        [str(i) for i in range(num_classes)]


def model_from_checkpoint(path: str | Path, map_location="cpu"):
    """Rebuild the model from the checkpoint alone; returns (model, state)."""
    from ..models import create_model
    state = load_checkpoint(path, map_location=map_location)
    config = {k: v for k, v in state["model_config"].items() if k not in REMOVED_MODEL_FIELDS}
    model = create_model(state["model_name"], **config)
    load_model_weights(model, state, path)
    return model, state
