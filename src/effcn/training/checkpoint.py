"""Self-describing checkpoints, written atomically and loaded without executing code.

A checkpoint is a dict saved with ``torch.save`` and read back with ``weights_only=True`` (so a
crafted pickle is refused): format tag, model name and config (enough to rebuild the model alone,
as in nanoGPT), weights, optimizer and scheduler state, epoch, best validation figures and the
run's resolved config. Writes go to a temporary file in the same folder, then ``os.replace``.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from ..errors import CheckpointError

FORMAT = "effcn-checkpoint-v1"
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename (never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


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


def load_model_weights(model: torch.nn.Module, state: dict, path: str | Path = "checkpoint") -> None:
    """Load ``state['model']`` into ``model``; a shape or key mismatch is a CheckpointError."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        first = str(e).splitlines()
        raise CheckpointError(f"checkpoint {path} does not fit model {state.get('model_name')!r} "
                              f"with this config ({' '.join(first[:2])[:200]}); use the model "
                              f"config stored in the checkpoint.") from None


def model_from_checkpoint(path: str | Path, map_location="cpu"):
    """Rebuild the model from the checkpoint alone; returns (model, state)."""
    from ..models import create_model
    state = load_checkpoint(path, map_location=map_location)
    model = create_model(state["model_name"], **state["model_config"])
    load_model_weights(model, state, path)
    return model, state
