"""The callback interface of the training loop, and the scalars every logger writes.

A Callback knows the trainer only by the public attributes it reads (run, config, model, val_x,
val_y, steps_per_epoch, class_names, resume, quiet, say). It lives in its own module so that the
callbacks (callbacks.py) and the experiment trackers (trackers.py) share it without importing
each other.
"""

from __future__ import annotations

BATCH_SCALARS = ("loss", "margin", "recon", "acc", "lr")  # of each batch record, per batch


class Callback:
    """Hooks into the training loop (figures, TensorBoard, trackers); every method is optional.

    ``trainer`` is the running Trainer; callbacks read its public attributes only.
    """

    def on_fit_start(self, trainer) -> None: ...

    def on_batches(self, trainer, records: list[dict]) -> None:
        """Called each time batch records are flushed (every train.log_every batches)."""

    def on_epoch_end(self, trainer, record: dict) -> None: ...

    def on_fit_end(self, trainer, summary: dict) -> None: ...

    def on_exception(self, trainer, error: BaseException) -> None:
        """Called once when fit() stops with an exception after on_fit_start (Ctrl-C,
        preemption, divergence, a full disk, a bug); the exception is raised again afterwards."""


def global_step(record: dict, steps_per_epoch: int) -> int:
    """The batch's step counted from the start of training (0 = the first batch)."""
    return (record["epoch"] - 1) * steps_per_epoch + record["step"]


def epoch_scalars(record: dict) -> dict:
    """The numbers of an epoch record (train_*, val_*, lr, epoch_seconds, ...), not kind/epoch."""
    return {k: v for k, v in record.items()
            if k not in ("kind", "epoch") and isinstance(v, (int, float))
            and not isinstance(v, bool)}


def flat_config(config) -> dict:
    """{"section.key": value} of a Config, lists and mappings as their text (for trackers'
    parameters and TensorBoard's hparams)."""
    flat = {}
    for section, values in config.to_dict().items():
        for key, value in values.items():
            if isinstance(value, (bool, int, float, str)):
                flat[f"{section}.{key}"] = value
            elif isinstance(value, (tuple, list, dict)) or value is None:
                flat[f"{section}.{key}"] = str(value)
    return flat
