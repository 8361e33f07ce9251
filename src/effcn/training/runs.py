"""Opening a trained run: its checkpoint, config and device, in one place.

    opened = open_run("runs/mnist/2026-...", checkpoint="best", device="auto")
    opened.model, opened.config, opened.class_names, opened.state["epoch"]

Evaluation, prediction, export, the explorer, the figures and the comparison table all open a
run this way, so they agree on which weights (the EMA where the run kept one), which config (the
one stored in the checkpoint, plus ``overrides``) and which class names a run has.

A run's files must agree: a checkpoint inside the run (best, last, checkpoints/epoch_NNN.pt) is
refused unless it holds the model, dataset and task of the run's config.yaml; a checkpoint file
from elsewhere, passed with a run, is evaluated with the run's config when it is compatible (the
same tensors and task) and is named in ``OpenedRun.note`` (training/checkpoint.py).

A pretrained folder (``effcn publish``: config.json + model.safetensors) opens the same way: its
config.json holds the run's config (without data.root), so ``effcn eval DIR`` rebuilds the same
test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, EffcnError
from ..models.pretrained import WEIGHTS_NAME, is_pretrained_folder, load_pretrained
from .checkpoint import (check_belongs, check_compatible, checkpoint_disagreement,
                         class_names_of, load_checkpoint, model_from_state)
from .config import Config
from .config_io import apply_overrides, config_from_dict, load_yaml
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
    run: RunDir                 # the run directory (the one given, else the checkpoint's)
    note: str | None            # why the checkpoint is not the run's own (None: it is)


def open_run(run_or_checkpoint: str | Path, checkpoint: str = "best",
             device: str | torch.device = "auto", overrides: list[str] = ()) -> OpenedRun:
    """Open a run directory's ``checkpoint`` (best | last | a .pt path), or a checkpoint file
    itself, on ``device`` (auto | cpu | cuda[:N]); ``overrides`` (KEY=VALUE, e.g.
    data.root=...) change the stored config; a pretrained folder opens too. A checkpoint that
    does not belong to its run is a CheckpointError (see the module docstring)."""
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if is_pretrained_folder(run_or_checkpoint):
        return _open_pretrained(Path(run_or_checkpoint), checkpoint, dev, overrides)
    path = resolve_checkpoint(run_or_checkpoint, checkpoint)
    given = Path(run_or_checkpoint)
    run = RunDir(given) if RunDir.is_run(given) else RunDir.of_checkpoint(path)
    state = load_checkpoint(path, map_location=dev)
    config, note = _checked_config(run, path, state)
    model = model_from_state(state, path).to(dev).eval()
    apply_overrides(config, overrides)
    return OpenedRun(model, config, path, state,
                     class_names_of(state, model.config.num_classes), dev, run, note)


def _checked_config(run: RunDir, path: Path, state: dict) -> tuple[Config, str | None]:
    """The config to open checkpoint ``state`` with, once the run's files are known to agree,
    and the note naming a checkpoint from elsewhere: a checkpoint inside the run must belong to
    it (check_belongs) and opens with its own stored config, as one outside any run does; one
    from elsewhere must be compatible with the run (check_compatible) and opens with the run's
    config.yaml."""
    if not run.is_run(run.path):
        return config_from_dict(state["config"]), None
    run_config = config_from_dict(load_yaml(run.config_path), announce=False)
    if path.resolve().parent == run.checkpoints.resolve():
        check_belongs(state, run_config, path, run.config_path)
        return config_from_dict(state["config"]), None
    note = check_compatible(state, run_config, path, run.config_path)
    return config_from_dict(load_yaml(run.config_path)), note  # announced this time


def disagreement(run: str | Path | RunDir, which: tuple[str, ...] = ("best",)) -> str | None:
    """The one sentence saying which of the run's checkpoints ``which`` (best, last, step)
    does not belong to it (another model, dataset or task than config.yaml's), or None when
    they agree; only the checkpoints' shapes are read (memory-mapped), not their weights."""
    run = RunDir.open(run)
    config = config_from_dict(load_yaml(run.config_path), announce=False)
    for path in (getattr(run, name) for name in which):
        if path.is_file():
            refusal = checkpoint_disagreement(load_checkpoint(path, mmap=True), config, path,
                                              run.config_path)
            if refusal:
                return refusal
    return None


def check_run_agrees(run: str | Path | RunDir, which: tuple[str, ...] = ("best",)) -> None:
    """``disagreement`` as a CheckpointError (e.g. before a run is resumed)."""
    refusal = disagreement(run, which)
    if refusal:
        raise CheckpointError(refusal)


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
                     pretrained.class_names, device, RunDir(folder), None)
