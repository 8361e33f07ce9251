"""The training loop: data held on the device, shuffled per epoch, composed per batch by a task.

    effcn train --config configs/mnist.yaml      ->  Trainer(config).fit()

There is one loop and one training step (:class:`TrainStep`, also what ``effcn bench`` times);
a task (training/tasks) supplies what differs between kinds of training: how a batch is composed,
the loss, the metric and the evaluation sets. Model selection uses a validation split carved
from the training set; the test split is evaluated once, at the end, with the best-validation
weights, in fp32 unless train.test_amp says otherwise. Each epoch's shuffling and augmentation
draw from a generator seeded by (seed, epoch), so a run resumed from an epoch's checkpoint
continues exactly as the uninterrupted run would have.
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
from ..models import create_model
from ..models.efficient_capsnet import count_parameters
from . import distributed, fastpath
from .callbacks import Callback, callbacks_from_config
from .checkpoint import checkpoint_state, load_checkpoint, load_model_weights, save_checkpoint
from .config import Config, save_yaml
from .ema import EMA
from .environment import environment, resolve_device
from .evaluate import evaluate
from .metrics import MetricsLog, read_metrics, truncate_metrics
from .optim import build_optimizer, build_schedule, step_epoch_schedule
from .preemption import StopSignals
from .rundir import RunDir
from .splits import TEST_SELECTED, load_test, load_train_val
from .tasks import Batch, Task, task_for


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """The generator for one epoch's shuffling and augmentation."""
    g = torch.Generator(device=device)
    g.manual_seed(seed * 100_003 + epoch)
    return g


class TrainStep:
    """One optimisation step: fast-path forward, the task's loss, backward, optimizer step.

    ``model`` is the plain module (its own loss, e.g. the CNN's cross-entropy, comes from it);
    ``forward_model`` what the step calls (DDP and/or compiled; default: ``model``). Returns the
    detached float64 row (loss, margin, recon, acc, then the task's extra_parts) on the device,
    without a host sync, or None when ``skip_nonfinite`` skipped a step with a non-finite loss
    (that check syncs).
    """

    def __init__(self, model, task: Task, optimizer, amp_dtype: torch.dtype | None = None,
                 memory_format=torch.contiguous_format, forward_model=None,
                 skip_nonfinite: bool = False):
        self.model, self.task, self.optimizer = model, task, optimizer
        self.amp_dtype, self.memory_format = amp_dtype, memory_format
        self.forward_model = forward_model if forward_model is not None else model
        self.skip_nonfinite = skip_nonfinite

    def __call__(self, batch: Batch) -> torch.Tensor | None:
        batch = batch._replace(x=batch.x.contiguous(memory_format=self.memory_format))
        out = fastpath.forward(self.forward_model, batch.x,
                               self.task.decoder_labels(batch, training=True), self.amp_dtype)
        loss, margin, recon, *extra = self.task.loss(self.model, out, batch)
        self.optimizer.zero_grad(set_to_none=True)
        if self.skip_nonfinite and not torch.isfinite(loss):
            return None
        loss.backward()
        self.optimizer.step()
        acc = self.task.hits(out, batch).mean()
        return torch.stack([loss.detach(), margin.detach(), recon.detach(), acc,
                            *(e.detach() for e in extra)]).double()


class Trainer:
    """Trains one model as configured and writes everything into a run directory.

    ``run_dir``: where to write (default: a new folder under run.dir); ``resume``: continue the
    run in ``run_dir`` from its last.pt. ``callbacks``: extra Callback objects.
    """

    def __init__(self, config: Config, run_dir: str | Path | None = None,
                 config_name: str = "run", resume: bool = False, quiet: bool = False,
                 callbacks: tuple[Callback, ...] = ()):
        # Under torchrun: joins the process group; only rank 0 writes (self.is_main).
        self.dist, self.device = distributed.init(resolve_device(config.train.device))
        self.is_main = self.dist.is_main
        self.config, self.quiet, self.resume = config, quiet or not self.is_main, resume
        self.callbacks = (callbacks_from_config(config) + list(callbacks)) if self.is_main else []
        if self.dist.enabled and config.train.skip_nonfinite:
            raise ConfigError("train.skip_nonfinite cannot be used under torchrun (a process that "
                              "skips a step would stall the others' gradient exchange); drop it.")
        self.task = task_for(config)
        if resume:
            self.run = RunDir.open(run_dir)
        else:
            path = None
            if self.is_main:
                if run_dir:
                    Path(run_dir).mkdir(parents=True, exist_ok=True)
                    path = str(run_dir)
                else:
                    path = str(RunDir.create(config.run.dir, config.run.name, config_name).path)
            self.run = RunDir(distributed.broadcast_object(path, self.dist))
        self.position = (0, 0)  # (epoch, batch) being trained, for the interrupt message
        self.stop_signals = StopSignals()
        self.mid_epoch = None   # resuming from step.pt: where in its epoch to continue

    @property
    def run_dir(self) -> Path:
        return self.run.path

    @property
    def val_x(self) -> torch.Tensor:
        """uint8 validation images as the model takes them (N, C, H, W), e.g. for figures."""
        return self.task.figure_images(self.val_split)[0]

    @property
    def val_y(self) -> torch.Tensor:
        """The labels of val_x (N,)."""
        return self.task.figure_images(self.val_split)[1]

    # ---------------------------------------------------------------- setup
    def _setup(self):
        cfg, t = self.config, self.config.train
        torch.manual_seed(t.seed)
        train, val = load_train_val(cfg, self.device)
        self.task.setup(train, val)
        self.val_split = val
        self.class_names = self.task.class_names(train)
        self.n_train, self.n_val = len(train), len(val)
        self.test_selected = cfg.data.protocol == "authors"
        self.model = create_model(cfg.model.name, **cfg.model.args).to(self.device)
        self.task.check_model(self.model)
        # The fast path (fastpath.py, distributed.py): self.model stays the plain module
        # (checkpoints, resume, callbacks); the step calls DDP and/or the compiled model.
        self.amp_dtype = fastpath.amp_dtype(t.amp, self.device)
        self.precision = fastpath.precision_name(self.amp_dtype)
        fastpath.prepare_model(self.model, t.channels_last)
        ddp = distributed.wrap(self.model, self.dist, self.device, t.sync_batchnorm)
        self.optimizer = build_optimizer(cfg, self.model.parameters())
        self.ema = EMA(self.model, t.ema_decay) if t.ema_decay else None
        # what validation (and so selection) evaluates: the averaged weights when kept
        self.eval_model = fastpath.maybe_compile(self.ema.model if self.ema else self.model,
                                                 t.compile, t.compile_mode)
        self.step = TrainStep(self.model, self.task, self.optimizer, self.amp_dtype,
                              fastpath.memory_format(t.channels_last),
                              fastpath.maybe_compile(ddp, t.compile, t.compile_mode),
                              t.skip_nonfinite)
        self.steps_per_epoch = distributed.steps_per_epoch(self.task.epoch_size, t.batch_size,
                                                           self.dist)
        self.scheduler, self.per_batch_schedule = build_schedule(cfg, self.optimizer,
                                                                 self.steps_per_epoch)
        self.best = {"epoch": 0, "val_acc": -1.0, "val_loss": float("inf")}
        self.test_set = None  # loaded on first use: every epoch with train.monitor_test
        self.start_epoch, self.skipped_steps = 1, 0
        # Training seconds of the earlier sessions of a resumed run (checkpoints carry the total
        # so far), and when this session's fit began: summary.json's train_seconds is the sum.
        self.seconds_before, self._fit_started = 0.0, None
        if self.resume:
            path, state = self._resume_state()
            load_model_weights(self.model, state, path, weights="raw")
            if self.ema is not None:
                if state.get("ema") is None:
                    raise ConfigError(f"train.ema_decay={t.ema_decay} but {path} holds "
                                      f"no averaged weights (the run trained without EMA); "
                                      f"resume with --set train.ema_decay=0.")
                self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.best, self.start_epoch = state["best"], state["epoch"] + 1
            self.skipped_steps = state.get("skipped_steps", 0)
            self.mid_epoch = state.get("mid_epoch")
            self.seconds_before = (state["train_seconds"] if "train_seconds" in state
                                   else self._seconds_logged(state))
            if self.mid_epoch and self.mid_epoch["world_size"] != self.dist.world_size:
                raise ConfigError(f"{path} was written by {self.mid_epoch['world_size']} "
                                  f"process(es) in the middle of an epoch; resume it with as many "
                                  f"(torchrun --nproc_per_node), or delete it to redo that epoch.")
            if self.is_main:
                truncate_metrics(self.run.metrics_path, state["epoch"],
                                 self.mid_epoch["step"] if self.mid_epoch else 0)

    def _resume_state(self) -> tuple[Path, dict]:
        """The checkpoint to resume from: step.pt when it is part of the epoch after last.pt's
        (a preempted or periodically saved epoch), else last.pt."""
        name = self.config.model.name
        last = (load_checkpoint(self.run.last, map_location=self.device, expect_model=name)
                if self.run.last.is_file() else None)
        done = last["epoch"] if last else 0
        if self.run.step.is_file():
            step = load_checkpoint(self.run.step, map_location=self.device, expect_model=name)
            if step.get("mid_epoch", {}).get("epoch") == done + 1:
                return self.run.step, step
        if last is None:
            raise EffcnError(f"cannot resume {self.run_dir}: it has no checkpoints/last.pt (the "
                             f"run stopped before its first epoch ended); start a new run.")
        return self.run.last, last

    def _state(self, epoch: int, **extra) -> dict:
        return checkpoint_state(self.model, self.config, epoch, self.class_names,
                                self.optimizer, self.scheduler, self.best, self.ema,
                                skipped_steps=self.skipped_steps,
                                train_seconds=self.train_seconds(), **extra)

    def train_seconds(self) -> float:
        """Seconds of fit() so far, earlier sessions of a resumed run included."""
        if self._fit_started is None:
            return self.seconds_before
        return self.seconds_before + time.perf_counter() - self._fit_started

    def _seconds_logged(self, state: dict) -> float:
        """A checkpoint from before train_seconds was saved: its epochs' logged training
        seconds (validation not included), plus the part of the epoch a step.pt holds."""
        if not self.run.metrics_path.is_file():
            return 0.0
        logged = sum(r.get("epoch_seconds", 0.0)
                     for r in read_metrics(self.run.metrics_path, kind="epoch")
                     if r["epoch"] <= state["epoch"])
        return logged + (state.get("mid_epoch") or {}).get("seconds", 0.0)

    # ---------------------------------------------------------------- steps
    def evaluate_val(self) -> dict:
        """Validation figures in the training precision (they only rank the epochs)."""
        return evaluate(self.eval_model, self.task, self.task.val_set(),
                        self.config.train.eval_batch_size, self.amp_dtype)

    def evaluate_test(self, model) -> dict:
        """The test split in the test precision (train.test_amp; fp32 by default)."""
        if self.test_set is None:
            self.test_set = self.task.eval_set(load_test(self.config, self.device), "test")
        return evaluate(model, self.task, self.test_set, self.config.train.eval_batch_size,
                        fastpath.amp_dtype(self.config.train.test_amp, self.device))

    def _train_epoch(self, epoch: int, log: MetricsLog | None) -> dict:
        cfg = self.config
        self.model.train()
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
        if self.mid_epoch is not None:  # resumed from step.pt: continue where it stopped
            mid, self.mid_epoch = self.mid_epoch, None
            first, seconds_before = mid["step"], mid["seconds"]
            aug_g.set_state(mid["rng"][self.dist.rank])
            # per process; the first step.pt files (2026-12-01 only) held one process's tensor
            sums = mid["sums"] if isinstance(mid["sums"], torch.Tensor) \
                else mid["sums"][self.dist.rank]
            sums = sums.to(self.device)
        bar = self._progress(self.steps_per_epoch, epoch)
        if bar is not None:
            bar.update(first)
        t0 = self._flushed_at = time.perf_counter()
        every = cfg.run.checkpoint_every_steps
        for step in range(first, self.steps_per_epoch):
            self.position = (epoch, step)
            idx = distributed.shard(order[step * bs:(step + 1) * bs], self.dist)
            row = self.step(self.task.train_batch(idx, aug_g))
            if row is None:
                self.skipped_steps += 1
                continue
            if self.ema is not None:
                self.ema.update(self.model)
            lr = self.optimizer.param_groups[0]["lr"]
            if self.per_batch_schedule:
                self.scheduler.step()
            sums += torch.cat([row * len(idx), row.new_tensor([len(idx)])])
            pending.append((step, lr, row))
            if len(pending) == cfg.train.log_every:
                self._flush(log, epoch, pending, bar)
                pending = []
            stop = self._stop_requested(step)
            if stop or (every and (step + 1) % every == 0 and step + 1 < self.steps_per_epoch):
                self._flush(log, epoch, pending, bar)
                pending = []
                self._save_step(epoch, step + 1, aug_g, sums,
                                seconds_before + time.perf_counter() - t0)
                if stop:
                    raise self._preempted(epoch, step + 1)
        self._flush(log, epoch, pending, bar)
        sums = distributed.all_sum(sums, self.dist)  # images of every process
        seconds = seconds_before + time.perf_counter() - t0
        if bar is not None:
            bar.close()
        seen = sums[-1].item()
        t = (sums[:-1] / sums[-1].clamp(min=1)).tolist()
        return {"train_loss": t[0], "train_margin": t[1], "train_recon": t[2], "train_acc": t[3],
                **{f"train_{name}": v for name, v in zip(extra, t[4:])},
                "epoch_seconds": seconds, "train_images_per_s": seen / seconds}

    def _stop_requested(self, step: int) -> bool:
        """A stop signal arrived (under torchrun: on any process, checked where they agree)."""
        if not self.dist.enabled:
            return self.stop_signals.received is not None
        if (step + 1) % self.config.train.log_every:
            return False
        return distributed.any_true(self.stop_signals.received is not None, self.dist)

    def _save_step(self, epoch: int, steps_done: int, aug_g: torch.Generator,
                   sums: torch.Tensor, seconds: float) -> None:
        """checkpoints/step.pt: everything needed to continue epoch ``epoch`` after
        ``steps_done`` batches as if never stopped (every process's generator state)."""
        # per process: its augmentation generator and its shard's running sums
        rng = distributed.all_gather_object(aug_g.get_state(), self.dist)
        sums = distributed.all_gather_object(sums.cpu(), self.dist)
        if self.is_main:
            save_checkpoint(self.run.step, self._state(epoch - 1, mid_epoch={
                "epoch": epoch, "step": steps_done, "lr": self.epoch_lr, "rng": rng,
                "sums": sums,
                "seconds": seconds, "world_size": self.dist.world_size}))
        distributed.barrier(self.dist)  # nobody exits before rank 0 has written it

    def _preempted(self, epoch: int, steps_done: int) -> Preempted:
        return Preempted(f"{self.stop_signals.name or 'a stop signal'} received: stopped after "
                         f"batch {steps_done}/{self.steps_per_epoch} of epoch {epoch}/"
                         f"{self.config.train.epochs} and saved checkpoints/step.pt; continue "
                         f"with effcn train --resume {self.run_dir}")

    def _flush(self, log: MetricsLog | None, epoch: int, pending: list, bar) -> None:
        """One device->host copy for many batches, so logging does not sync every step."""
        if not pending:
            return
        values = torch.stack([r for _, _, r in pending]).tolist()
        if not self.config.train.skip_nonfinite:
            for (step, _, _), v in zip(pending, values):
                if not math.isfinite(v[0]):
                    self._diverged(epoch, f"the loss became {v[0]} at batch {step}")
        if log is None:  # not rank 0: nothing to write (its figures are its shard's)
            return
        # Throughput over the batches of this flush (the values above already waited for them).
        now = time.perf_counter()
        images_per_s = len(pending) * self.config.train.batch_size / (now - self._flushed_at)
        self._flushed_at = now
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

    def _progress(self, steps: int, epoch: int):
        if self.quiet or not self.config.train.progress:
            return None
        from tqdm.auto import tqdm
        return tqdm(total=steps, desc=f"epoch {epoch}/{self.config.train.epochs}", leave=False,
                    unit="batch", dynamic_ncols=True)

    def _diverged(self, epoch: int, cause: str):
        """Stop on a non-finite loss or weight; checkpoints on disk are from the last good epoch."""
        kept = (f"the last good weights (epoch {epoch - 1}) are in {self.run.last}"
                if self.run.last.exists() else "no epoch had finished, so no checkpoint was "
                "written")
        raise EffcnError(f"training diverged: {cause} in epoch {epoch}; {kept}; lower optim.lr "
                         f"(or set train.skip_nonfinite=true to skip such steps) and retrain.")

    def _resume_point(self) -> str | None:
        """What --resume would continue from, in words (None: nothing to resume)."""
        try:
            path, state = self._resume_state()
        except (EffcnError, OSError):
            return None
        if path == self.run.step:
            mid = state["mid_epoch"]
            return f"checkpoints/step.pt holds epoch {mid['epoch']} up to batch {mid['step']}"
        return f"checkpoints/last.pt holds epoch {state['epoch']}"

    def _interrupted(self) -> Interrupted:
        epoch, step = self.position
        where = (f"in epoch {epoch}/{self.config.train.epochs} at batch {step + 1}/"
                 f"{self.steps_per_epoch}" if epoch else "before the first batch")
        point = self._resume_point()
        if point:
            return Interrupted(f"training interrupted {where}; {point}: continue with effcn "
                               f"train --resume {self.run_dir}")
        return Interrupted(f"training interrupted {where}; no epoch had finished, so there is "
                           f"nothing to resume: start the run again.")

    def _filesystem_fault(self, err: OSError) -> EffcnError | None:
        """One sentence for a full disk, a read-only folder, ... met while training."""
        point = self._resume_point()
        way_out = ("{fix}; " + point + f", so resume with effcn train --resume {self.run_dir}"
                   if point else "{fix} and start the run again")
        return filesystem_error(err, way_out)

    def _check_finite_weights(self, epoch: int):
        """A finite loss can still leave non-finite weights (the epoch's last step): never save them."""
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            self._diverged(epoch, "a weight became non-finite")

    # ------------------------------------------------------------------ fit
    def fit(self) -> dict:
        """Train all epochs, then evaluate the best checkpoint on the test split once.

        Ctrl-C raises :class:`~effcn.errors.Interrupted` naming the epoch, the batch and the
        resume command; what is on disk stays whole (last.pt resumes exactly)."""
        self._wall_start, self._started = time.perf_counter(), datetime.now()
        lock = RunLock(self.run_dir, enabled=self.is_main)  # one writer per run (rank 0's)
        try:
            self._take_run_lock(lock)
            try:
                self._setup()
            except BaseException:
                lock.release()
                # A run that failed before writing anything (missing data, ...) leaves no folder.
                if not self.resume and self.is_main and self.run_dir.is_dir() \
                        and not any(self.run_dir.iterdir()):
                    self.run_dir.rmdir()
                raise
            try:
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
            if self.dist.enabled and hasattr(self, "step"):
                # The DDP wrapper must be gone before its process group: one destroyed later
                # (e.g. a Trainer kept in a notebook or a script's globals) aborts the process.
                self.step.forward_model = self.model
                gc.collect()
            distributed.shutdown(self.dist)

    def _take_run_lock(self, lock: RunLock) -> None:
        """Rank 0 takes the run's lock; a refusal reaches every rank (none trains alone)."""
        try:
            lock.acquire()
            refused = None
        except RunLocked as e:
            refused = str(e)
        refused = distributed.broadcast_object(refused, self.dist)
        if refused:
            raise RunLocked(refused)

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
                  f"{self.task.split_items}, device "
                  f"{self.device}, {self.precision})")
        self._fit_started = time.perf_counter()
        self._callbacks_started = True  # from here on a failure reaches on_exception
        self._emit("on_fit_start")
        try:
            for epoch in range(self.start_epoch, cfg.train.epochs + 1):
                self._fit_epoch(epoch, log)
        finally:
            if log is not None:
                log.close()
        return self.train_seconds()

    def _fit_epoch(self, epoch: int, log: MetricsLog | None) -> None:
        cfg = self.config
        # the epoch's starting lr (a per-batch schedule moves it; step.pt keeps it)
        lr = self.epoch_lr = (self.mid_epoch.get("lr", self.optimizer.param_groups[0]["lr"])
                              if self.mid_epoch is not None
                              else self.optimizer.param_groups[0]["lr"])
        train = self._train_epoch(epoch, log)
        # One model on every process: each then validates on the whole split and reaches the
        # same best-epoch decision (duplicated work, no extra exchange).
        distributed.broadcast_buffers(self.model, self.dist)
        if self.ema is not None:
            distributed.broadcast_buffers(self.ema.model, self.dist)
        val = {f"val_{k}": v for k, v in self.evaluate_val().items() if k != "per_class_acc"}
        record = {"kind": "epoch", "epoch": epoch, "lr": lr, **train, **val,
                  "skipped_steps": self.skipped_steps}
        if cfg.train.monitor_test and not self.test_selected:
            # Logged only: selection stays on validation. What the authors' protocol would have
            # reported from this run is the best of these (summary.json: test_selected_*).
            record["test_acc"] = self.evaluate_test(self.eval_model)["acc"]
        improved = (val["val_acc"], -val["val_loss"]) > (self.best["val_acc"],
                                                         -self.best["val_loss"])
        if improved:
            self.best = {"epoch": epoch, "val_acc": val["val_acc"], "val_loss": val["val_loss"]}
        if not self.per_batch_schedule:
            step_epoch_schedule(self.scheduler, val["val_acc"])
        self._check_finite_weights(epoch)
        if self.is_main:
            # The record goes first: a kill between the two writes leaves last.pt at the epoch
            # before, and resume drops this record and redoes the epoch.
            log.write([record])
            state = self._state(epoch)
            if improved:
                save_checkpoint(self.run.best, state)
            save_checkpoint(self.run.last, state)
            self.run.step.unlink(missing_ok=True)  # that epoch's mid-way point is stale now
        self._emit("on_epoch_end", record)
        self.say(f"epoch {epoch}/{cfg.train.epochs}  loss {train['train_loss']:.4f}  train acc "
                  f"{train['train_acc']:.4f}  val acc {val['val_acc']:.4f}  lr {lr:.2e}  "
                  f"{train['epoch_seconds']:.1f}s")

    def finish(self, train_seconds: float) -> dict:
        """Evaluate the best-validation weights on the test split once; write summary.json."""
        state = load_checkpoint(self.run.best, map_location=self.device)
        load_model_weights(self.model, state)
        result = self.evaluate_test(self.model)
        test_amp = fastpath.amp_dtype(self.config.train.test_amp, self.device)
        described = {f"test_{k}": v for k, v in self.test_set.describe().items()}
        summary = self.write_summary(train_seconds, {
            "test_acc": result["acc"], "test_metric": self.task.metric,
            "test_loss": result["loss"], "test_margin": result["margin"],
            "test_recon": result["recon"], **described,
            "test_precision": fastpath.precision_name(test_amp), "val_images": self.n_val,
            **self._test_selected_figures()})
        self.say(f"test {self.task.metric}{' [' + TEST_SELECTED + ']' if self.test_selected else ''}"
                 f" (best val epoch {summary['best_epoch']}): "
                  f"{summary['test_acc']:.4f} on {len(self.test_set)} test "
                  f"{self.task.set_items} "
                  f"({summary['test_precision']})")
        if "test_selected_acc" in summary:
            self.say(f"best epoch on test ({TEST_SELECTED}, from train.monitor_test): "
                     f"{summary['test_selected_acc']:.4f} (epoch {summary['test_selected_epoch']})")
        return summary

    def _test_selected_figures(self) -> dict:
        """With train.monitor_test: the best per-epoch test accuracy (ties: the earliest epoch),
        read back from metrics.jsonl so that a resumed run counts every epoch."""
        if not self.config.train.monitor_test or self.test_selected:
            return {}
        rows = [r for r in read_metrics(self.run.metrics_path, kind="epoch") if "test_acc" in r]
        if not rows:
            return {}
        best = max(rows, key=lambda r: (r["test_acc"], -r["epoch"]))
        return {"test_selected_acc": best["test_acc"], "test_selected_epoch": best["epoch"],
                "test_selected_note": f"{TEST_SELECTED} on this run's per-epoch test figures "
                                      f"(train.monitor_test); selection stayed on validation"}

    def write_summary(self, train_seconds: float, test: dict) -> dict:
        """summary.json: the test figures of ``test`` inside the run's statistics."""
        summary = {
            "run": self.run_dir.name, "run_dir": str(self.run_dir), "task": self.task.name,
            "model": self.model.model_name, "dataset": self.config.data.dataset,
            "epochs": self.config.train.epochs, "best_epoch": self.best["epoch"],
            "best_val_acc": self.best["val_acc"], **test, "train_images": self.n_train,
            "train_seconds": train_seconds, "parameters": count_parameters(self.model),
            "parameters_without_decoder": count_parameters(self.model, include_decoder=False),
            "device": str(self.device), "precision": self.precision,
            "weights": f"EMA (decay {self.config.train.ema_decay})" if self.ema else "raw",
            # wall time of this fit() call: data loading, training, test evaluation
            "wall_seconds": time.perf_counter() - self._wall_start,
            "started": self._started.isoformat(timespec="seconds"),
            "finished": datetime.now().isoformat(timespec="seconds"),
            "resumed": self.resume,
            "protocol": self.config.data.protocol,
            "selection": TEST_SELECTED if self.test_selected else "validation split",
        }
        write_json(self.run.summary_path, summary)
        self._emit("on_fit_end", summary)
        return summary

    def _emit(self, event: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)

    def _emit_exception(self, error: BaseException) -> None:
        """on_exception for every callback once fit() fails after on_fit_start; a callback that
        fails there is reported, never hides the error itself."""
        if not getattr(self, "_callbacks_started", False):
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
