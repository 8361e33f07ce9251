"""Training curves from a run's metrics.jsonl: loss, loss parts, accuracy, learning rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import EffcnError
from ..io import read_jsonl


def load_curves(metrics_path: str | Path) -> dict:
    """Batch and epoch series from metrics.jsonl; batch x positions are fractional epochs."""
    records = read_jsonl(metrics_path)
    batches = [r for r in records if r.get("kind") == "batch"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    if not epochs and not batches:
        raise EffcnError(f"{metrics_path} holds no metrics yet; train for at least one epoch.")
    steps = {}
    for r in batches:  # steps per epoch, for fractional-epoch x positions
        steps[r["epoch"]] = max(steps.get(r["epoch"], 0), r["step"] + 1)
    bx = np.array([r["epoch"] - 1 + (r["step"] + 1) / steps[r["epoch"]] for r in batches])

    def col(rows, key):
        return np.array([float(r[key]) if isinstance(r.get(key), (int, float)) else np.nan
                         for r in rows])
    curves = {"batch_x": bx, "epoch_x": np.array([r["epoch"] for r in epochs], dtype=float)}
    for key in ("loss", "margin", "recon", "acc", "lr"):
        curves[f"batch_{key}"] = col(batches, key)
    for key in ("train_loss", "train_margin", "train_recon", "train_acc", "val_loss",
                "val_margin", "val_recon", "val_acc", "lr", "train_images_per_s",
                "epoch_seconds", "test_acc"):  # test_acc: only with train.monitor_test
        curves[f"epoch_{key}"] = col(epochs, key)
    return curves


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (window clipped to the series)."""
    if len(y) == 0 or window <= 1:
        return y
    window = min(window, len(y))
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = (c[window:] - c[:-window]) / window
    return np.concatenate([np.cumsum(y[:window - 1]) / np.arange(1, window), out])


def plot_training_curves(curves: dict, title: str = ""):
    """2 x 2 panels: total loss, loss parts, accuracy (train/val), learning rate."""
    from .imageio import pyplot
    plt = pyplot()
    fig, ax = plt.subplots(2, 2, figsize=(10, 6.5))
    bx, ex = curves["batch_x"], curves["epoch_x"]
    mid = ex - 0.5  # epoch means and the epoch's lr belong to the middle of the epoch
    w = max(1, len(bx) // 50)
    a = ax[0, 0]
    if len(bx):
        a.plot(bx, curves["batch_loss"], color="C0", alpha=0.2, lw=0.7)
        a.plot(bx, smooth(curves["batch_loss"], w), color="C0", lw=1, label="train (batches)")
    a.plot(mid, curves["epoch_train_loss"], "o-", color="C0", label="train (epoch mean)")
    a.plot(ex, curves["epoch_val_loss"], "s-", color="C1", label="validation (epoch end)")
    a.set_title("loss (margin + weight x reconstruction)")
    a.set_yscale("log")
    a.legend(fontsize=8)
    a = ax[0, 1]
    for key, colour in (("margin", "C2"), ("recon", "C3")):
        if len(bx):
            a.plot(bx, smooth(curves[f"batch_{key}"], w), color=colour, lw=1, alpha=0.6,
                   label=f"{key} train (batches)")
        a.plot(ex, curves[f"epoch_val_{key}"], "s-", color=colour,
               label=f"{key} validation (epoch end)")
    a.set_title("loss parts (reconstruction unweighted)")
    a.set_yscale("log")
    a.legend(fontsize=8)
    a = ax[1, 0]
    if len(bx):
        a.plot(bx, smooth(curves["batch_acc"], w), color="C0", lw=1, alpha=0.6,
               label="train (batches)")
    a.plot(mid, curves["epoch_train_acc"], "o-", color="C0", label="train (epoch mean)")
    a.plot(ex, curves["epoch_val_acc"], "s-", color="C1", label="validation (epoch end)")
    a.set_title("accuracy")
    a.legend(fontsize=8)
    a = ax[1, 1]
    if len(bx):
        a.plot(bx, curves["batch_lr"], color="C4", lw=1)
    a.plot(mid, curves["epoch_lr"], "o", color="C4")
    a.set_title("learning rate")
    a.set_yscale("log")
    for a in ax.flat:
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
    fig.suptitle(title or "training curves")
    fig.tight_layout()
    return fig


def plot_accuracy_comparison(runs: dict, title: str = ""):
    """Validation (solid) and, where the run monitored it, test (dashed) accuracy of several
    runs, per epoch and per hour of training. ``runs``: {label: load_curves(...) result}."""
    from .imageio import pyplot
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for i, (label, c) in enumerate(runs.items()):
        hours = np.cumsum(np.nan_to_num(c["epoch_epoch_seconds"])) / 3600
        for ax, x in zip(axes, (c["epoch_x"], hours)):
            ax.plot(x, 100 * c["epoch_val_acc"], "o-", ms=3, color=f"C{i}",
                    label=f"{label}: validation")
            if np.isfinite(c["epoch_test_acc"]).any():
                ax.plot(x, 100 * c["epoch_test_acc"], "s--", ms=3, color=f"C{i}", alpha=0.7,
                        label=f"{label}: test (monitored, never selects)")
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel("hours of training")
    axes[0].set_ylabel("accuracy (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
