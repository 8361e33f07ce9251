"""Experiment trackers as trainer callbacks: Weights & Biases and MLflow.

    run.wandb=true          WandbTracker: project run.wandb_project, name run.wandb_name (default:
                            the run directory's name), tags run.wandb_tags; W&B's files go to
                            RUN/wandb unless WANDB_DIR is set (WANDB_MODE=offline works)
    run.mlflow=URI          MlflowTracker: a run in experiment run.mlflow_experiment of the
                            tracking store URI (file:///path/mlruns, sqlite:///path/mlflow.db,
                            http://host:5000)

Both log what TensorBoard gets: the batch scalars (batch/loss, batch/margin, batch/recon,
batch/acc, batch/lr against the global step), every number of the epoch record (epoch/val_acc,
...) against the epoch, the reconstruction grid of each epoch as an image where the model has a
decoder, the resolved config, and at the end the summary (test figures and run statistics).
The tracker's run id is kept in RUN/trackers.json, so ``effcn train --resume`` continues the
same tracker run. Each package is imported when the trainer is built, so a missing extra fails
before the run directory is created. Failed or interrupted fits mark the tracker run so.
"""

from __future__ import annotations

import os
import time

from ..errors import ConfigError, EffcnError, Interrupted, Preempted
from ..io import read_json, write_json
from .hooks import BATCH_SCALARS, Callback, epoch_scalars, flat_config, global_step

_MLFLOW_BATCH = 900  # metrics per log_batch call (MLflow's limit is 1000)


def _require(module: str, switch: str, extra: str):
    """Import an optional tracker package, or the one sentence that says how to get it."""
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(f"{switch} needs the {module} package; install it with pip install "
                          f"'effcn[{extra}]' or switch the tracker off.") from None


def _remember(trainer, tracker: str, ids: dict) -> None:
    """Keep a tracker's run id in RUN/trackers.json (what a resume continues)."""
    path = trainer.run.trackers_path
    write_json(path, {**read_json(path), tracker: ids})


def _remembered(trainer, tracker: str) -> dict:
    if not trainer.resume:
        return {}
    return read_json(trainer.run.trackers_path).get(tracker, {})


def _summary_scalars(summary: dict) -> dict:
    return {k: v for k, v in summary.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class WandbTracker(Callback):
    """Logs to a Weights & Biases run (online, or offline with WANDB_MODE=offline)."""

    def __init__(self, grids=None):
        self.wandb = _require("wandb", "run.wandb=true", "wandb")
        self.grids = grids  # a ReconstructionGrids (callbacks.py) or None
        self.run = None
        self._images = True

    def on_fit_start(self, trainer) -> None:
        cfg = trainer.config.run
        previous = _remembered(trainer, "wandb")
        kwargs = dict(project=cfg.wandb_project, name=cfg.wandb_name or trainer.run.name,
                      tags=list(cfg.wandb_tags))
        if not os.environ.get("WANDB_DIR"):
            kwargs["dir"] = str(trainer.run.path)
        if previous.get("id") and previous.get("project") == cfg.wandb_project:
            kwargs.update(id=previous["id"], resume="allow")
        try:
            self.run = self.wandb.init(**kwargs, settings=self.wandb.Settings(
                silent=bool(trainer.quiet)))
        except Exception as e:  # no login, no network, a bad project name ...
            raise EffcnError(f"run.wandb=true but W&B did not start a run ({_first_line(e)}); "
                             f"log in with wandb login, set WANDB_MODE=offline, or set "
                             f"run.wandb=false.") from None
        # a resume may change fields (--set train.epochs=...): the config is the latest one
        self.run.config.update(trainer.config.to_dict(), allow_val_change=True)
        for name, step in (("batch/*", "trainer/global_step"), ("epoch/*", "epoch"),
                           ("reconstructions", "epoch")):
            self.run.define_metric(step)
            self.run.define_metric(name, step_metric=step)
        self.steps_per_epoch = trainer.steps_per_epoch
        _remember(trainer, "wandb", {"id": self.run.id, "project": cfg.wandb_project})

    def on_batches(self, trainer, records: list[dict]) -> None:
        for r in records:
            self.run.log({**{f"batch/{k}": r[k] for k in BATCH_SCALARS},
                          "trainer/global_step": global_step(r, self.steps_per_epoch)})

    def on_epoch_end(self, trainer, record: dict) -> None:
        epoch = record["epoch"]
        row = {f"epoch/{k}": v for k, v in epoch_scalars(record).items()}
        grid = self.grids.grid(trainer, epoch) if self.grids is not None else None
        if grid is not None and self._images:
            try:
                row["reconstructions"] = self.wandb.Image(grid, caption=f"epoch {epoch}")
            except ImportError:  # W&B draws images with Pillow
                self._images = False
                trainer.say("W&B: reconstruction grids need Pillow (pip install "
                            "'effcn[image]'); logging the scalars only")
        self.run.log({**row, "epoch": epoch})

    def on_fit_end(self, trainer, summary: dict) -> None:
        self.run.summary.update({k: v for k, v in summary.items()
                                 if isinstance(v, (bool, int, float, str))})
        self.run.finish()
        self.run = None

    def on_exception(self, trainer, error: BaseException) -> None:
        if self.run is None:
            return
        if isinstance(error, Preempted) and hasattr(self.run, "mark_preempting"):
            self.run.mark_preempting()
        self.run.finish(exit_code=_exit_code(error))
        self.run = None


class MlflowTracker(Callback):
    """Logs to an MLflow run through MlflowClient (no global active run is touched)."""

    def __init__(self, uri: str, experiment: str, grids=None):
        self.mlflow = _require("mlflow", f"run.mlflow={uri}", "mlflow")
        self.uri, self.experiment, self.grids = uri, experiment, grids
        self.client = self.run_id = None
        self._images = True

    def on_fit_start(self, trainer) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient
        if _is_file_store(self.uri):
            # MLflow 3 keeps the file store in maintenance mode and refuses it unless asked;
            # run.mlflow naming one is that request (an explicit setting is left as it is).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        previous = _remembered(trainer, "mlflow")
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            if previous.get("uri") == self.uri and previous.get("run_id") and \
                    self._exists(previous["run_id"]):
                self.run_id = previous["run_id"]
                self.client.update_run(self.run_id, status="RUNNING")
                known = set(self.client.get_run(self.run_id).data.params)
            else:
                found = self.client.get_experiment_by_name(self.experiment)
                experiment_id = (found.experiment_id if found is not None
                                 else self.client.create_experiment(self.experiment))
                self.run_id = self.client.create_run(
                    experiment_id, run_name=trainer.run.name,
                    tags={"effcn.run_dir": str(trainer.run.path)}).info.run_id
                known = set()
            params = [Param(k, str(v)[:6000]) for k, v in flat_config(trainer.config).items()
                      if k not in known]  # MLflow refuses to change a logged parameter
            for start in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[start:start + 100])
            if trainer.run.config_path.is_file():
                self.client.log_artifact(self.run_id, str(trainer.run.config_path))
        except EffcnError:
            raise
        except Exception as e:
            raise EffcnError(f"run.mlflow={self.uri}: MLflow could not start a run "
                             f"({_first_line(e)}); fix the tracking URI (e.g. "
                             f"sqlite:///path/mlflow.db or file:///path/mlruns) or set "
                             f"run.mlflow=''.") from None
        self.steps_per_epoch = trainer.steps_per_epoch
        _remember(trainer, "mlflow", {"uri": self.uri, "run_id": self.run_id})

    def _exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
            return True
        except Exception:
            return False

    def _log(self, rows) -> None:
        """Log (key, value, step) rows, in batches MLflow accepts."""
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v, step in rows]
        for start in range(0, len(metrics), _MLFLOW_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + _MLFLOW_BATCH])

    def on_batches(self, trainer, records: list[dict]) -> None:
        self._log((f"batch/{k}", r[k], global_step(r, self.steps_per_epoch))
                  for r in records for k in BATCH_SCALARS)

    def on_epoch_end(self, trainer, record: dict) -> None:
        epoch = record["epoch"]
        self._log((f"epoch/{k}", v, epoch) for k, v in epoch_scalars(record).items())
        grid = self.grids.grid(trainer, epoch) if self.grids is not None else None
        if grid is not None and self._images:
            try:
                self.client.log_image(self.run_id, grid,
                                      artifact_file=f"reconstructions/epoch_{epoch:03d}.png")
            except ImportError:  # MLflow writes images with Pillow
                self._images = False
                trainer.say("MLflow: reconstruction grids need Pillow (pip install "
                            "'effcn[image]'); logging the scalars only")

    def on_fit_end(self, trainer, summary: dict) -> None:
        epochs = int(summary.get("epochs", 0))
        self._log((k, v, epochs) for k, v in _summary_scalars(summary).items())
        self.client.log_dict(self.run_id, summary, "summary.json")
        self.client.set_terminated(self.run_id, "FINISHED")
        self.run_id = None

    def on_exception(self, trainer, error: BaseException) -> None:
        if self.run_id is None:
            return
        stopped = isinstance(error, (KeyboardInterrupt, Interrupted, Preempted))
        self.client.set_terminated(self.run_id, "KILLED" if stopped else "FAILED")
        self.run_id = None


def _exit_code(error: BaseException) -> int:
    """What the effcn command exits with for ``error``: 130 Ctrl-C, 143 preempted, 2, or 1."""
    if isinstance(error, KeyboardInterrupt):
        return 130
    return error.exit_status if isinstance(error, EffcnError) else 1


def _is_file_store(uri: str) -> bool:
    """A local folder: file:///path or a plain path (MLflow's file store)."""
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    return scheme in ("", "file") and not uri.startswith(("databricks", "sqlite"))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (f"{type(err).__name__}: {text[0]}" if text else type(err).__name__)[:200]


def trackers_from_config(config, grids=None) -> list[Callback]:
    """The trackers that ``config.run`` switches on (each imports its package now)."""
    run, found = config.run, []
    if run.wandb:
        found.append(WandbTracker(grids))
    if run.mlflow:
        found.append(MlflowTracker(run.mlflow, run.mlflow_experiment, grids))
    return found

