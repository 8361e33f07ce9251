"""Opening a trained run: its checkpoint, config and device, in one place.

    opened = open_run("runs/mnist/2026-...", checkpoint="best", device="auto")
    opened.model, opened.config, opened.class_names, opened.state["epoch"]

Evaluation, prediction, export, the explorer, the figures and the comparison table all open a
run this way, so they agree on which weights (the EMA where the run kept one), which config (the
one stored in the checkpoint, plus ``overrides``) and which class names a run has.

A pretrained folder (``effcn publish``: config.json + model.safetensors) opens the same way: its
config.json holds the run's config (without data.root), so ``effcn eval DIR`` rebuilds the same
test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import EffcnError
from ..models.pretrained import WEIGHTS_NAME, is_pretrained_folder, load_pretrained
from .checkpoint import class_names_of, model_from_checkpoint
from .config import Config
from .config_io import apply_overrides, config_from_dict
from .environment import resolve_device
from .rundir import RunDir, resolve_checkpoint


@dataclass
class OpenedRun:
    """A run's checkpoint, opened: the model (on ``device``, eval mode) and what describes it."""
    model: torch.nn.Module
    config: Config              # the run's resolved config, as stored in the checkpoint
    checkpoint: Path
    state: dict                 # the checkpoint's contents (epoch, model_name, weights, ...)
    class_names: list[str]      # one per class of the model
    device: torch.device
    run: RunDir                 # the run directory holding the checkpoint


def open_run(run_or_checkpoint: str | Path, checkpoint: str = "best",
             device: str | torch.device = "auto", overrides: list[str] = ()) -> OpenedRun:
    """Open a run directory's ``checkpoint`` (best | last | a .pt path), or a checkpoint file
    itself, on ``device`` (auto | cpu | cuda[:N]); ``overrides`` (KEY=VALUE, e.g.
    data.root=...) change the stored config; a pretrained folder opens too."""
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if is_pretrained_folder(run_or_checkpoint):
        return _open_pretrained(Path(run_or_checkpoint), checkpoint, dev, overrides)
    path = resolve_checkpoint(run_or_checkpoint, checkpoint)
    model, state = model_from_checkpoint(path, map_location=dev)
    model.to(dev).eval()
    config = config_from_dict(state["config"])
    apply_overrides(config, overrides)
    return OpenedRun(model, config, path, state,
                     class_names_of(state, model.config.num_classes), dev,
                     RunDir.of_checkpoint(path))


def _open_pretrained(folder: Path, checkpoint: str, device: torch.device,
                     overrides: list[str]) -> OpenedRun:
    """A pretrained folder as an OpenedRun: its config.json's run config (or, from a folder
    written without one, the defaults with its model and pixel divisor)."""
    if checkpoint != "best":
        raise EffcnError(f"{folder} is a pretrained folder with one set of weights "
                         f"({WEIGHTS_NAME}); drop --checkpoint {checkpoint}.")
    pretrained = load_pretrained(folder, device)
    c = pretrained.config
    config = config_from_dict(c["run_config"]) if isinstance(c.get("run_config"), dict) \
        else Config()
    config.model.name, config.data.pixel_divisor = c["model_name"], float(c["pixel_divisor"])
    apply_overrides(config, overrides)
    state = {"epoch": c.get("epoch", 0), "model_name": c["model_name"],
             "model_config": c["model_args"], "class_names": pretrained.class_names}
    return OpenedRun(pretrained.model, config, folder / WEIGHTS_NAME, state,
                     pretrained.class_names, device, RunDir(folder))
