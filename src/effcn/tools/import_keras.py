"""``effcn import-keras``: the authors' Keras weights as a normal effcn run folder."""

from __future__ import annotations

from pathlib import Path

from ..models.keras_import import PRESETS
from ..training.checkpoint import checkpoint_state, save_checkpoint
from ..training.config import Config
from ..training.config_io import save_yaml
from ..training.rundir import RunDir


def write_imported_run(model, preset: str, out_dir: str | Path, source: str | Path) -> Path:
    """Save ``model`` as a run folder (config.yaml + checkpoints/best.pt), so ``effcn eval OUT``
    and ``effcn predict OUT`` work; returns the checkpoint path."""
    model_name, dataset, augment, classes = PRESETS[preset]
    config = Config()
    config.model.name, config.data.dataset, config.data.augment = model_name, dataset, augment
    run = RunDir(out_dir)
    save_checkpoint(run.best, checkpoint_state(
        model, config, 0, classes, best={"epoch": 0, "val_acc": -1.0, "val_loss": float("inf")},
        imported_from=str(source)))
    save_yaml(config.to_dict(), run.config_path)
    return run.best
