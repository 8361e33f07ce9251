"""Callbacks that the trainer attaches from the config's ``run`` section.

    run.recon_every=N       ReconstructionGrids: RUN/recon/epoch_NNN.png every N epochs (and the
                            last), RUN/recon/reconstructions.gif at the end
    run.tensorboard=true    TensorBoardLogger: RUN/tensorboard (scalars, lr, grid, histograms,
                            hparams with the final metrics)
    run.checkpoint_every=N  EpochCheckpoints: RUN/checkpoints/epoch_NNN.pt (weights and config only)
                            for effcn visualize --epoch and routing across epochs
    run.wandb=true          WandbTracker, run.mlflow=URI MlflowTracker (trackers.py): the same
                            scalars and grids, the config and the summary, in W&B / MLflow

Each imports its optional dependency when training starts, so a missing extra fails before the
first epoch, not after it. A callback (the interface: hooks.py) knows the trainer only by the
attributes it reads (run, config, model, val_x, val_y, steps_per_epoch, class_names, say). The
figure callbacks draw with effcn.analysis, the layer below training.
"""

from __future__ import annotations

from ..analysis import reconstructions as R
from ..analysis.imageio import pil_image, save_png
from ..analysis.probe import require_decoder
from ..errors import ConfigError, EffcnError
from .checkpoint import checkpoint_state, save_checkpoint
from .hooks import BATCH_SCALARS, Callback, epoch_scalars, global_step
from .trackers import trackers_from_config

__all__ = ["Callback", "ReconstructionGrids", "TensorBoardLogger", "EpochCheckpoints",
           "callbacks_from_config"]


def _due(epoch: int, every: int, last: int) -> bool:
    return every > 0 and (epoch % every == 0 or epoch == last)


class ReconstructionGrids(Callback):
    """The run's 32 fixed validation images and their reconstructions, as a grid per epoch.

    ``every=0`` saves nothing but still serves ``grid()`` (used by TensorBoard).
    """

    def __init__(self, every: int):
        self.every = every
        self.images = self.labels = None
        self._cache: tuple[int, object] | None = None

    def on_fit_start(self, trainer) -> None:
        if self.every:
            pil_image()
        try:
            require_decoder(trainer.model)
        except EffcnError as e:
            if self.every:
                raise ConfigError(f"run.recon_every={self.every} but {e} Set run.recon_every=0."
                                  ) from None
            self.images = None
            return
        self.dir = trainer.run.recon
        path = trainer.run.fixed_images
        if path.is_file():  # a resumed run keeps its images
            self.images, self.labels = R.load_fixed_images(path)
        else:
            pos = R.choose_fixed_images(trainer.val_y, trainer.config.train.seed)
            self.images, self.labels = trainer.val_x[pos.to(trainer.val_x.device)].cpu(), \
                trainer.val_y[pos.to(trainer.val_y.device)].cpu()
            R.save_fixed_images(path, self.images, self.labels, pos)

    def grid(self, trainer, epoch: int):
        """uint8 grid of this epoch (computed once per epoch), or None without a decoder."""
        if self.images is None:
            return None
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, R.reconstruction_grid(trainer.model, self.images))
        return self._cache[1]

    def on_epoch_end(self, trainer, record: dict) -> None:
        epoch = record["epoch"]
        if _due(epoch, self.every, trainer.config.train.epochs):
            save_png(self.grid(trainer, epoch), R.epoch_grid_path(self.dir, epoch))

    def on_fit_end(self, trainer, summary: dict) -> None:
        if self.every and self.images is not None:
            path = R.assemble_gif(self.dir, self.dir / "reconstructions.gif")
            trainer.say(f"reconstructions: {path}")


class TensorBoardLogger(Callback):
    """Batch and epoch scalars (incl. learning rate), the reconstruction grid per epoch, weight
    histograms per epoch, and hparams with the final metrics, in RUN/tensorboard."""

    def __init__(self, grids: ReconstructionGrids):
        self.grids = grids
        self.writer = None

    def on_fit_start(self, trainer) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise EffcnError("run.tensorboard=true needs the tensorboard package; install it with "
                             "pip install 'effcn[tensorboard]' or set run.tensorboard=false."
                             ) from None
        self.writer = SummaryWriter(log_dir=str(trainer.run.tensorboard))
        self.steps_per_epoch = trainer.steps_per_epoch

    def on_batches(self, trainer, records: list[dict]) -> None:
        for r in records:
            step = global_step(r, self.steps_per_epoch)
            for key in BATCH_SCALARS:
                self.writer.add_scalar(f"batch/{key}", r[key], step)

    def on_epoch_end(self, trainer, record: dict) -> None:
        epoch, w = record["epoch"], self.writer
        for key, value in epoch_scalars(record).items():
            w.add_scalar(f"epoch/{key}", value, epoch)
        grid = self.grids.grid(trainer, epoch)
        if grid is not None:
            w.add_image("reconstructions", grid, epoch,
                        dataformats="HW" if grid.ndim == 2 else "HWC")
        for name, p in trainer.model.named_parameters():
            w.add_histogram(f"weights/{name}", p.detach().float().cpu(), epoch)
        w.flush()

    def on_fit_end(self, trainer, summary: dict) -> None:
        from torch.utils.tensorboard.summary import hparams
        hp = {}
        for section, values in trainer.config.to_dict().items():
            for key, value in values.items():
                if isinstance(value, (bool, int, float, str)):
                    hp[f"{section}.{key}"] = value
                elif isinstance(value, (tuple, list, dict)):
                    hp[f"{section}.{key}"] = str(value)
        metrics = {f"hparam/{k}": float(summary[k])
                   for k in ("test_acc", "test_loss", "best_val_acc", "best_epoch")}
        for part in hparams(hp, metrics):
            self.writer.file_writer.add_summary(part)
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, summary["epochs"])
        self.writer.close()


class EpochCheckpoints(Callback):
    """checkpoints/epoch_NNN.pt every N epochs (and the last): weights and configs, no
    optimizer state, loadable with model_from_checkpoint."""

    def __init__(self, every: int):
        self.every = every

    def on_epoch_end(self, trainer, record: dict) -> None:
        epoch = record["epoch"]
        if _due(epoch, self.every, trainer.config.train.epochs):
            save_checkpoint(trainer.run.epoch_checkpoint(epoch),
                            checkpoint_state(trainer.model, trainer.config, epoch,
                                             trainer.class_names))


def callbacks_from_config(config) -> list[Callback]:
    """The callbacks that ``config.run`` switches on, in the order they must run."""
    run, callbacks = config.run, []
    grids = ReconstructionGrids(run.recon_every)
    if run.recon_every or run.tensorboard or run.wandb or run.mlflow:
        callbacks.append(grids)  # first: the loggers below draw its grids
    if run.tensorboard:
        callbacks.append(TensorBoardLogger(grids))
    callbacks += trackers_from_config(config, grids)
    if run.checkpoint_every:
        callbacks.append(EpochCheckpoints(run.checkpoint_every))
    return callbacks
