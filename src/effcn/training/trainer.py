"""The training loop: data held on the device, shuffled per epoch, composed per batch by a task.

    effcn train --config configs/mnist.yaml      ->  Trainer(config).fit()

fit() reads top to bottom: build the run's state (training/state.py; on --resume, load its
checkpoint into it: training/resume.py), train the epochs, evaluate the best-validation weights
on the test split once and write summary.json (training/summary.py). There is one training step
(training/step.py, also what ``effcn bench`` times); a task (training/tasks) supplies what differs
between kinds of training: how a batch is composed, the loss, the metric and the evaluation sets.
Model selection uses a validation split carved from the training set; the test split is evaluated
in fp32 unless train.test_amp says otherwise. Each epoch's shuffling and augmentation draw from a
generator seeded by (seed, epoch), so a resumed run continues exactly as the uninterrupted run
would have.
"""

from __future__ import annotations

import gc
import math
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

from ..errors import ConfigError, EffcnError, Interrupted, Preempted, RunLocked, filesystem_error
from ..io import RunLock, read_json, write_json
from . import distributed, fastpath
from .callbacks import Callback, callbacks_from_config
from .checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from .config import Config
from .config_io import save_yaml
from .environment import environment, resolve_device
from .evaluate import evaluate
from .metrics import MetricsLog
from .optim import step_epoch_schedule
from .preemption import StopSignals
from .resume import restore, resumable_run, resume_point, save_step
from .rundir import RunDir
from .splits import TEST_SELECTED, load_test
from .state import TrainState, build_state
from .step import epoch_generator
from .summary import (selects_on_test, summary_lines, test_figures, test_selected_figures,
                      write_summary)
from .tasks import task_for


class _FromState:
    """A Trainer attribute that reads the state fit() builds (``path``: a field of TrainState,
    dotted for a nested one); before fit() it does not exist (AttributeError)."""

    def __init__(self, path: str):
        self.path = self.name = path  # name: the Trainer attribute's, set by __set_name__

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, trainer, owner=None):
        if trainer is None:
            return self
        if trainer.state is None:
            raise AttributeError(f"Trainer.{self.name} exists once fit() has built the run")
        value = trainer.state
        for part in self.path.split("."):
            value = getattr(value, part)
        return value

    def __set__(self, trainer, value) -> None:
        raise AttributeError(f"Trainer.{self.name} reads trainer.state.{self.path}; set that")


class Trainer:
    """Trains one model as configured and writes everything into a run directory.

    ``run``: the RunDir to write (``run_dir``: the same as a path; default: a new folder under
    run.dir); ``resume``: continue that run from its last.pt or step.pt. ``callbacks``: extra
    Callback objects. What fit() trains lives in ``state`` (training/state.py); the attributes
    callbacks read (hooks.py: model, config, run, val_x, ...) are named below.
    """

    # What fit() built, by the names callbacks, tools and tests read.
    model = _FromState("model")
    optimizer = _FromState("optimizer")
    scheduler = _FromState("scheduler")
    per_batch_schedule = _FromState("per_batch_schedule")
    ema = _FromState("ema")
    eval_model = _FromState("eval_model")
    step = _FromState("step")
    amp_dtype = _FromState("amp_dtype")
    precision = _FromState("precision")
    steps_per_epoch = _FromState("steps_per_epoch")
    best = _FromState("best")
    start_epoch = _FromState("start_epoch")
    skipped_steps = _FromState("skipped_steps")
    class_names = _FromState("data.class_names")
    val_split = _FromState("data.val")
    n_train = _FromState("data.n_train")
    n_val = _FromState("data.n_val")

    def __init__(self, config: Config, run_dir: str | Path | RunDir | None = None,
                 config_name: str = "run", resume: bool = False, quiet: bool = False,
                 callbacks: tuple[Callback, ...] = (), *, run: RunDir | None = None):
        if run is not None and run_dir is not None:
            raise TypeError("Trainer takes run= or run_dir=, not both")
        # Under torchrun: joins the process group; only rank 0 writes (self.is_main).
        self.dist, self.device = distributed.init(resolve_device(config.train.device))
        self.is_main = self.dist.is_main
        self.config, self.quiet, self.resume = config, quiet or not self.is_main, resume
        self.callbacks = (callbacks_from_config(config) + list(callbacks)) if self.is_main else []
        if self.dist.enabled and config.train.skip_nonfinite:
            raise ConfigError("train.skip_nonfinite cannot be used under torchrun (a process that "
                              "skips a step would stall the others' gradient exchange); drop it.")
        self.task = task_for(config)
        self.run = self._open_run(run if run is not None else run_dir, config_name)
        self.state: TrainState | None = None  # built when fit() starts
        self.test_set = None  # the test split, loaded on first use (train.monitor_test: each epoch)
        self.position = (0, 0)  # (epoch, batch) being trained, for the interrupt message
        self.stop_signals = StopSignals()
        self._started, self._wall_start = datetime.now(), time.perf_counter()  # reset by fit()
        self._callbacks_started = False  # from on_fit_start on, a failure reaches on_exception

    def _open_run(self, where: str | Path | RunDir | None, config_name: str) -> RunDir:
        """The run to continue (resume), or the folder of a new one (created by rank 0)."""
        given = where if isinstance(where, RunDir) or where is None else RunDir(where)
        if self.resume:
            return resumable_run(given)
        path = None
        if self.is_main:
            if given is not None:
                given.path.mkdir(parents=True, exist_ok=True)
                path = str(given.path)
            else:
                path = str(RunDir.create(self.config.run.dir, self.config.run.name,
                                         config_name).path)
        path = distributed.broadcast_object(path, self.dist)
        return given if given is not None else RunDir(path)

    @property
    def run_dir(self) -> Path:
        return self.run.path

    @property
    def test_selected(self) -> bool:
        """data.protocol=authors: epochs are selected on the test split."""
        return selects_on_test(self.config)

    @property
    def val_x(self) -> torch.Tensor:
        """uint8 validation images as the model takes them (N, C, H, W), e.g. for figures."""
        return self.task.figure_images(self.val_split)[0]

    @property
    def val_y(self) -> torch.Tensor:
        """The labels of val_x (N,)."""
        return self.task.figure_images(self.val_split)[1]

    def train_seconds(self) -> float:
        """Seconds of training so far, earlier sessions of a resumed run included."""
        return self.state.train_seconds() if self.state is not None else 0.0

    # ------------------------------------------------------------------ fit
    def fit(self) -> dict:
        """Train all epochs, then evaluate the best checkpoint on the test split once.

        Ctrl-C raises :class:`~effcn.errors.Interrupted` naming the epoch, the batch and the
        resume command; what is on disk stays whole (last.pt resumes exactly)."""
        self._wall_start, self._started = time.perf_counter(), datetime.now()
        lock = RunLock(self.run_dir, enabled=self.is_main)  # one writer per run (rank 0's)
        try:
            self._take_run_lock(lock)
            self.state = self._setup(lock)
            try:
                if self.resume:
                    restore(self.state, self.run, self.config, self.dist, self.device)
                with self.stop_signals:
                    train_seconds = self._fit_epochs()
                summary = self.finish(train_seconds) if self.is_main else None
            except BaseException as e:
                self._emit_exception(e)
                raise
            finally:
                lock.release()
            return distributed.broadcast_object(summary, self.dist)
        except KeyboardInterrupt:
            raise self._interrupted() from None
        except OSError as e:
            described = self._filesystem_fault(e)
            if described is None:
                raise
            raise described from None
        finally:
            if self.dist.enabled and self.state is not None:
                # The DDP wrapper must be gone before its process group: one destroyed later
                # (e.g. a Trainer kept in a notebook or a script's globals) aborts the process.
                self.state.step.forward_model = self.state.model
                gc.collect()
            distributed.shutdown(self.dist)

    def _take_run_lock(self, lock: RunLock) -> None:
        """Rank 0 takes the run's lock; a refusal (or any failure to take it) reaches every rank,
        so none trains alone and none waits for the others forever."""
        failure = None
        try:
            lock.acquire()
        except Exception as e:  # noqa: BLE001 -- any failure must reach every rank, or they wait
            failure = e
        refused = distributed.broadcast_object(None if failure is None else str(failure),
                                               self.dist)
        if failure is not None:
            raise failure
        if refused:
            raise RunLocked(refused)

    def _setup(self, lock: RunLock) -> TrainState:
        """The run's data, model, optimizer, schedule, EMA and step (training/state.py)."""
        try:
            return build_state(self.config, self.task, self.dist, self.device)
        except BaseException:
            lock.release()
            # A run that failed before writing anything (missing data, ...) leaves no folder.
            if not self.resume and self.is_main and self.run_dir.is_dir() \
                    and not any(self.run_dir.iterdir()):
                self.run_dir.rmdir()
            raise

    def _fit_epochs(self) -> float:
        cfg, log = self.config, None
        if self.is_main:
            # On resume too: --set overrides (e.g. more epochs) must be what a later resume reads.
            save_yaml(cfg.to_dict(), self.run.config_path)
            env = environment(self.device)
            if self.resume and self.run.env_path.is_file():  # keep the first start's
                first = read_json(self.run.env_path)
                env = {**first, "resumes": first.get("resumes", []) + [env]}
            write_json(self.run.env_path, env)
            log = MetricsLog(self.run.metrics_path)
        if self.test_selected:
            self.say(f"data.protocol=authors: training on every training image, epochs selected "
                     f"on the TEST split; every figure of this run is {TEST_SELECTED}")
        self.say(f"run directory: {self.run_dir}  ({self.n_train} train / {self.n_val} val "
                 f"{self.task.split_items}, device {self.device}, {self.precision})")
        if hasattr(self.state.model, "describe_primary"):  # "primary capsules: 9x9 depthwise ..."
            self.say(self.state.model.describe_primary())
        for note in self.state.data.train.notes:  # what a folder dataset held out or skipped
            self.say(f"data: {note}")
        self.state.fit_started = time.perf_counter()
        self._callbacks_started = True
        self._emit("on_fit_start")
        try:
            for epoch in range(self.state.start_epoch, cfg.train.epochs + 1):
                self._fit_epoch(epoch, log)
        finally:
            if log is not None:
                log.close()
        return self.train_seconds()

    def _fit_epoch(self, epoch: int, log: MetricsLog | None) -> None:
        """Train one epoch, validate, keep the best, save last.pt (and best.pt), log."""
        cfg, s = self.config, self.state
        # the epoch's starting lr (a per-batch schedule moves it; step.pt keeps it)
        lr = s.optimizer.param_groups[0]["lr"]
        if s.mid_epoch is not None:
            lr = s.mid_epoch.get("lr", lr)
        train = self._train_epoch(epoch, lr, log)
        # One model on every process: each then validates on the whole split and reaches the
        # same best-epoch decision (duplicated work, no extra exchange).
        distributed.broadcast_buffers(s.model, self.dist)
        if s.ema is not None:
            distributed.broadcast_buffers(s.ema.model, self.dist)
        val = {f"val_{k}": v for k, v in self.evaluate_val().items() if k != "per_class_acc"}
        record = {"kind": "epoch", "epoch": epoch, "lr": lr, **train, **val,
                  "skipped_steps": s.skipped_steps}
        if cfg.train.monitor_test and not self.test_selected:
            # Logged only: selection stays on validation. What the authors' protocol would have
            # reported from this run is the best of these (summary.json: test_selected_*).
            record["test_acc"] = self.evaluate_test(s.eval_model)["acc"]
        improved = (val["val_acc"], -val["val_loss"]) > (s.best["val_acc"], -s.best["val_loss"])
        if improved:
            s.best = {"epoch": epoch, "val_acc": val["val_acc"], "val_loss": val["val_loss"]}
        if not s.per_batch_schedule:
            step_epoch_schedule(s.scheduler, val["val_acc"])
        self._check_finite_weights(epoch)
        if self.is_main:
            # The record goes first: a kill between the two writes leaves last.pt at the epoch
            # before, and resume drops this record and redoes the epoch.
            log.write([record])
            checkpoint = s.checkpoint(cfg, epoch)
            if improved:
                save_checkpoint(self.run.best, checkpoint)
            save_checkpoint(self.run.last, checkpoint)
            self.run.step.unlink(missing_ok=True)  # that epoch's mid-way point is stale now
        self._emit("on_epoch_end", record)
        self.say(f"epoch {epoch}/{cfg.train.epochs}  loss {train['train_loss']:.4f}  train acc "
                 f"{train['train_acc']:.4f}  val acc {val['val_acc']:.4f}  lr {lr:.2e}  "
                 f"{train['epoch_seconds']:.1f}s")

    def _train_epoch(self, epoch: int, epoch_lr: float, log: MetricsLog | None) -> dict:
        """The epoch's batches through the step; its train_* figures (mean per image)."""
        cfg, s = self.config, self.state
        s.model.train()
        g = epoch_generator(cfg.train.seed, epoch, self.device)
        bs = cfg.train.batch_size
        order = self.task.epoch_order(g)  # the same on every process
        # Under DDP each process augments (composes) its shard with its own draws.
        aug_g = (epoch_generator(cfg.train.seed + 1009 * self.dist.rank, epoch, self.device)
                 if self.dist.enabled else g)
        # (loss, margin, recon, acc, the task's extra parts..., images), each weighted by images
        extra = self.task.extra_parts
        pending = []
        sums = torch.zeros(5 + len(extra), device=self.device, dtype=torch.float64)
        first, seconds_before = 0, 0.0
        if s.mid_epoch is not None:  # resumed from step.pt: continue where it stopped
            mid, s.mid_epoch = s.mid_epoch, None
            first, seconds_before = mid["step"], mid["seconds"]
            aug_g.set_state(mid["rng"][self.dist.rank])
            # per process; the first step.pt files (2026-12-01 only) held one process's tensor
            sums = mid["sums"] if isinstance(mid["sums"], torch.Tensor) \
                else mid["sums"][self.dist.rank]
            sums = sums.to(self.device)
        aug_g, sums = s.begin_epoch(aug_g, sums)  # under train.cuda_graph: the graph's own
        bar = self._progress(s.steps_per_epoch, epoch)
        if bar is not None:
            bar.update(first)
        t0 = flushed_at = time.perf_counter()
        every = cfg.run.checkpoint_every_steps
        for step in range(first, s.steps_per_epoch):
            self.position = (epoch, step)
            idx = distributed.shard(order[step * bs:(step + 1) * bs], self.dist)
            row = s.train_step(idx, aug_g, sums)  # batch, step, EMA and sums
            if row is None:
                s.skipped_steps += 1
                continue
            lr = s.optimizer.param_groups[0]["lr"]
            if s.per_batch_schedule:
                s.scheduler.step()
            pending.append((step, lr, row))
            if len(pending) == cfg.train.log_every:
                flushed_at = self._flush(log, epoch, pending, bar, flushed_at)
                pending = []
            stop = self._stop_requested(step)
            if stop or (every and (step + 1) % every == 0 and step + 1 < s.steps_per_epoch):
                flushed_at = self._flush(log, epoch, pending, bar, flushed_at)
                pending = []
                save_step(self.run, s, cfg, self.dist, epoch, step + 1, epoch_lr, aug_g, sums,
                          seconds_before + time.perf_counter() - t0)
                if stop:
                    raise self._preempted(epoch, step + 1)
        self._flush(log, epoch, pending, bar, flushed_at)
        sums = distributed.all_sum(sums, self.dist)  # images of every process
        seconds = seconds_before + time.perf_counter() - t0
        if bar is not None:
            bar.close()
        seen = sums[-1].item()
        t = (sums[:-1] / sums[-1].clamp(min=1)).tolist()
        return {"train_loss": t[0], "train_margin": t[1], "train_recon": t[2], "train_acc": t[3],
                **{f"train_{name}": v for name, v in zip(extra, t[4:])},
                "epoch_seconds": seconds, "train_images_per_s": seen / seconds}

    def finish(self, train_seconds: float) -> dict:
        """Evaluate the best-validation weights on the test split once; write summary.json."""
        s = self.state
        load_model_weights(s.model, load_checkpoint(self.run.best, map_location=self.device))
        result = self.evaluate_test(s.model)
        test_amp = fastpath.amp_dtype(self.config.train.test_amp, self.device)
        test = {**test_figures(self.task, result, self.test_set, test_amp, s.data.n_val),
                **test_selected_figures(self.config, self.run)}
        summary = write_summary(self.run, self.config, self.task, s, self.device, test,
                                train_seconds, self._started, self._wall_start, self.resume)
        self._emit("on_fit_end", summary)
        for line in summary_lines(summary, self.task, len(self.test_set)):
            self.say(line)
        return summary

    # ---------------------------------------------------------- evaluation
    def evaluate_val(self) -> dict:
        """Validation figures in the training precision (they only rank the epochs)."""
        s = self.state
        return evaluate(s.eval_model, self.task, self.task.val_set(),
                        self.config.train.eval_batch_size, s.amp_dtype,
                        forward=s.eval_forward(s.eval_model))

    def evaluate_test(self, model) -> dict:
        """The test split in the test precision (train.test_amp; fp32 by default)."""
        if self.test_set is None:
            self.test_set = self.task.eval_set(load_test(self.config, self.device), "test")
        return evaluate(model, self.task, self.test_set, self.config.train.eval_batch_size,
                        fastpath.amp_dtype(self.config.train.test_amp, self.device),
                        forward=self.state.eval_forward(model))

    # ------------------------------------------------- logging and stopping
    def _flush(self, log: MetricsLog | None, epoch: int, pending: list, bar,
               since: float) -> float:
        """One device->host copy for many batches, so logging does not sync every step.
        ``since``: when the previous flush ended; returns when this one did."""
        if not pending:
            return since
        values = torch.stack([r for _, _, r in pending]).tolist()
        if not self.config.train.skip_nonfinite:
            for (step, _, _), v in zip(pending, values):
                if not math.isfinite(v[0]):
                    self._diverged(epoch, f"the loss became {v[0]} at batch {step}")
        if log is None:  # not rank 0: nothing to write (its figures are its shard's)
            return since
        # Throughput over the batches of this flush (the values above already waited for them).
        now = time.perf_counter()
        images_per_s = len(pending) * self.config.train.batch_size / (now - since)
        extra = self.task.extra_parts
        records = [{"kind": "batch", "epoch": epoch, "step": step, "lr": lr, "loss": v[0],
                    "margin": v[1], "recon": v[2], "acc": v[3], **dict(zip(extra, v[4:])),
                    "images_per_s": images_per_s}
                   for (step, lr, _), v in zip(pending, values)]
        log.write(records)
        self._emit("on_batches", records)
        if bar is not None:
            bar.update(len(records))
            bar.set_postfix(loss=f"{values[-1][0]:.4f}", acc=f"{values[-1][3]:.3f}")
        return now

    def _progress(self, steps: int, epoch: int):
        if self.quiet or not self.config.train.progress:
            return None
        from tqdm.auto import tqdm
        return tqdm(total=steps, desc=f"epoch {epoch}/{self.config.train.epochs}", leave=False,
                    unit="batch", dynamic_ncols=True)

    def _stop_requested(self, step: int) -> bool:
        """A stop signal arrived (under torchrun: on any process, checked where they agree)."""
        if not self.dist.enabled:
            return self.stop_signals.received is not None
        if (step + 1) % self.config.train.log_every:
            return False
        return distributed.any_true(self.stop_signals.received is not None, self.dist)

    def _preempted(self, epoch: int, steps_done: int) -> Preempted:
        return Preempted(f"{self.stop_signals.name or 'a stop signal'} received: stopped after "
                         f"batch {steps_done}/{self.steps_per_epoch} of epoch {epoch}/"
                         f"{self.config.train.epochs} and saved checkpoints/step.pt; continue "
                         f"with effcn train --resume {self.run_dir}")

    def _check_finite_weights(self, epoch: int):
        """A finite loss can still leave non-finite weights (the epoch's last step): never save them."""
        if not all(torch.isfinite(p).all() for p in self.state.model.parameters()):
            self._diverged(epoch, "a weight became non-finite")

    def _diverged(self, epoch: int, cause: str):
        """Stop on a non-finite loss or weight; checkpoints on disk are from the last good epoch."""
        kept = (f"the last good weights (epoch {epoch - 1}) are in {self.run.last}"
                if self.run.last.exists() else "no epoch had finished, so no checkpoint was "
                "written")
        raise EffcnError(f"training diverged: {cause} in epoch {epoch}; {kept}; lower optim.lr "
                         f"(or set train.skip_nonfinite=true to skip such steps) and retrain.")

    def _interrupted(self) -> Interrupted:
        epoch, step = self.position
        where = (f"in epoch {epoch}/{self.config.train.epochs} at batch {step + 1}/"
                 f"{self.steps_per_epoch}" if epoch else "before the first batch")
        point = resume_point(self.run, self.config.model.name, self.device)
        if point:
            return Interrupted(f"training interrupted {where}; {point}: continue with effcn "
                               f"train --resume {self.run_dir}")
        return Interrupted(f"training interrupted {where}; no epoch had finished, so there is "
                           f"nothing to resume: start the run again.")

    def _filesystem_fault(self, err: OSError) -> EffcnError | None:
        """One sentence for a full disk, a read-only folder, ... met while training."""
        point = resume_point(self.run, self.config.model.name, self.device)
        way_out = ("{fix}; " + point + f", so resume with effcn train --resume {self.run_dir}"
                   if point else "{fix} and start the run again")
        return filesystem_error(err, way_out)

    # ------------------------------------------------------------ callbacks
    def _emit(self, event: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)

    def _emit_exception(self, error: BaseException) -> None:
        """on_exception for every callback once fit() fails after on_fit_start; a callback that
        fails there is reported, never hides the error itself."""
        if not self._callbacks_started:
            return
        self._callbacks_started = False
        for cb in self.callbacks:
            try:
                cb.on_exception(self, error)
            except Exception as e:  # noqa: BLE001 -- the original error is what matters
                print(f"effcn: {type(cb).__name__} could not close after the error "
                      f"({type(e).__name__}: {e})", file=sys.stderr)

    def say(self, msg: str) -> None:
        """Print a line of progress (nothing when quiet, or on ranks other than 0)."""
        if not self.quiet:
            print(msg, flush=True)
