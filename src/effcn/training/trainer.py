"""The training loop: data held on the device, shuffled per epoch, augmented per batch.

    effcn train --config configs/mnist.yaml      ->  Trainer(config).fit()

Model selection uses a validation split carved from the training set; the test split is loaded
and evaluated once, at the end, with the best-validation weights. Each epoch's shuffling and
augmentation draw from a generator seeded by (seed, epoch), so a run resumed from an epoch's
checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from ..capsules import margin_loss, reconstruction_loss
from ..errors import ConfigError, EffcnError
from ..models import create_model, model_config_dict
from ..models.efficient_capsnet import count_parameters
from . import distributed, fastpath
from .checkpoint import (atomic_write_text, load_checkpoint, load_model_weights, save_checkpoint)
from .config import Config, config_from_dict, save_yaml
from .metrics import MetricsLog, truncate_metrics


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but no CUDA device is available here; use "
                          f"--set train.device=cpu (or auto).")
    return torch.device(name)


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """The generator for one epoch's shuffling and augmentation."""
    g = torch.Generator(device=device)
    g.manual_seed(seed * 100_003 + epoch)
    return g


def as_nchw(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) or (N, C, H, W) -> (N, C, H, W)."""
    return images.unsqueeze(1) if images.dim() == 3 else images


def load_split(config: Config, split: str):
    """The dataset object of ``split`` ('train' or 'test') as configured."""
    from ..data import get_dataset
    cls = get_dataset(config.data.dataset)
    return cls(root=config.data.root, split=split, download=config.data.download)


def train_val_split(n: int, val_size: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val) of a fixed random split of n training images."""
    if val_size >= n:
        raise ConfigError(f"data.val_size={val_size} leaves no training images out of {n}; "
                          f"use a smaller validation split.")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    return perm[: n - val_size], perm[n - val_size:]


def check_compatible(model, images: torch.Tensor, labels: torch.Tensor, dataset: str) -> None:
    """The model must take the dataset's image size and channels and cover its classes."""
    cfg = model.config
    _, c, h, w = images.shape
    if (c, h, w) != (cfg.in_channels, cfg.image_size, cfg.image_size):
        raise ConfigError(f"dataset {dataset} has {c}x{h}x{w} images but model "
                          f"{model.model_name} expects {cfg.in_channels}x{cfg.image_size}x"
                          f"{cfg.image_size}; choose a model preset for this dataset.")
    if int(labels.max()) >= cfg.num_classes:
        raise ConfigError(f"dataset {dataset} has labels up to {int(labels.max())} but model "
                          f"{model.model_name} has {cfg.num_classes} classes; set "
                          f"model.args.num_classes.")


def eval_transform_of(augment):
    """The evaluation-time preprocessing of a training augmentation (e.g. smallNORB's
    standardisation and centre crop): its ``eval_transform`` method, or None (identity)."""
    return getattr(augment, "eval_transform", None)


def loss_parts(out, images: torch.Tensor, labels: torch.Tensor, recon_weight: float,
               model=None):
    """(total, margin, reconstruction) losses of a forward result on float images.

    A model with a ``classification_loss(out, labels)`` method (the baseline CNN: cross-entropy)
    supplies the classification part in place of the margin loss; it is still reported as
    'margin' so every run's metrics have the same keys.
    """
    hook = getattr(model, "classification_loss", None)
    margin = hook(out, labels) if hook is not None else margin_loss(out.lengths, labels)
    if out.reconstruction is None:
        recon = torch.zeros((), device=margin.device)
    else:
        recon = reconstruction_loss(out.reconstruction, images)
    return margin + recon_weight * recon, margin, recon


@torch.no_grad()
def evaluate_model(model, images: torch.Tensor, labels: torch.Tensor, recon_weight: float = 0.392,
                   batch_size: int = 500, return_predictions: bool = False,
                   transform=None, amp_dtype: torch.dtype | None = None) -> dict:
    """Loss parts and accuracy on uint8 images (N, C, H, W); the decoder is masked by the
    prediction. With return_predictions, also 'predictions' (N,) and 'lengths' (N, classes).
    ``transform`` (see eval_transform_of) maps each float batch in [0, 1] to the model's input;
    ``amp_dtype``: autocast dtype of the forward (fastpath.amp_dtype), None for fp32."""
    model.eval()
    device = images.device
    totals = torch.zeros(4, device=device, dtype=torch.float64)
    preds, lengths = [], []
    for start in range(0, len(labels), batch_size):
        x = images[start:start + batch_size].float().div_(255)
        if transform is not None:
            x = transform(x)
        y = labels[start:start + batch_size]
        out = fastpath.forward(model, x, None, amp_dtype)
        loss, margin, recon = loss_parts(out, x, y, recon_weight, model)
        pred = out.lengths.argmax(1)
        n = len(y)
        totals += torch.stack([loss * n, margin * n, recon * n, (pred == y).sum()]).double()
        if return_predictions:
            preds.append(pred)
            lengths.append(out.lengths)
    t = (totals / max(len(labels), 1)).tolist()
    result = {"loss": t[0], "margin": t[1], "recon": t[2], "acc": t[3]}
    if return_predictions:
        result["predictions"] = torch.cat(preds)
        result["lengths"] = torch.cat(lengths)
    return result


def build_optimizer(config: Config, params) -> torch.optim.Optimizer:
    o = config.optim
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                weight_decay=o.weight_decay, fused=o.fused)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                 weight_decay=o.weight_decay, fused=o.fused)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


class ExpDecayWithFloor:
    """The paper's schedule as a LambdaLR factor: lr = max(lr0 * decay^epoch, min_lr).

    A callable object (not a lambda) so LambdaLR saves it in its state dict as plain data.
    """

    def __init__(self, decay: float, floor_factor: float):
        self.decay, self.floor_factor = decay, floor_factor

    def __call__(self, epoch: int) -> float:
        return max(self.decay ** epoch, self.floor_factor)


def build_schedule(config: Config, optimizer, steps_per_epoch: int):
    """(scheduler, per_batch) for the configured schedule; stepped per epoch unless per_batch."""
    s, lr, epochs = config.schedule, config.optim.lr, config.train.epochs
    sched = torch.optim.lr_scheduler
    if s.name == "exp_decay":
        return sched.LambdaLR(optimizer, ExpDecayWithFloor(s.decay, s.min_lr / lr)), False
    if s.name == "constant":
        return sched.LambdaLR(optimizer, ExpDecayWithFloor(1.0, 1.0)), False
    if s.name == "step":
        return sched.StepLR(optimizer, step_size=s.step_size, gamma=s.gamma), False
    if s.name == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=s.min_lr), False
    if s.name == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                pct_start=s.pct_start), True
    return sched.ReduceLROnPlateau(optimizer, mode="max", factor=s.factor, patience=s.patience,
                                   min_lr=s.min_lr), False


def environment(device: torch.device) -> dict:
    """Versions, device and git revision, saved as env.json in the run directory."""
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__, "platform": platform.platform(), "device": str(device),
           "cpu_threads": torch.get_num_threads(), "argv": sys.argv,
           "world_size": int(os.environ.get("WORLD_SIZE", "1")),
           "started": datetime.now().isoformat(timespec="seconds")}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain"],
                               capture_output=True, text=True, timeout=5)
        if rev.returncode == 0:
            env["git_revision"] = rev.stdout.strip()
            env["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from .. import __version__
        env["effcn"] = __version__
    except ImportError:
        pass
    return env


def new_run_dir(config: Config, config_name: str) -> Path:
    """A fresh run directory; an explicitly named one that exists is refused, never reused."""
    parent = Path(config.run.dir)
    if config.run.name:
        run_dir = parent / config.run.name
        if run_dir.exists():
            raise EffcnError(f"run directory {run_dir} already exists; continue it with "
                             f"effcn train --resume {run_dir}, or choose another run.name.")
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir, n = parent / f"{config_name}-{stamp}", 1
        while run_dir.exists():
            run_dir, n = parent / f"{config_name}-{stamp}-{n}", n + 1
    run_dir.mkdir(parents=True)
    return run_dir


class Callback:
    """Hooks into the training loop (figures, TensorBoard, ...); every method is optional."""

    def on_fit_start(self, trainer: "Trainer") -> None: ...

    def on_batches(self, trainer: "Trainer", records: list[dict]) -> None:
        """Called each time batch records are flushed (every train.log_every batches)."""

    def on_epoch_end(self, trainer: "Trainer", record: dict) -> None: ...

    def on_fit_end(self, trainer: "Trainer", summary: dict) -> None: ...


class Trainer:
    """Trains one model as configured and writes everything into a run directory."""

    def __init__(self, config: Config, run_dir: str | Path | None = None,
                 config_name: str = "run", resume: bool = False, quiet: bool = False,
                 callbacks: tuple[Callback, ...] = ()):
        from .callbacks import callbacks_from_config  # figures/TensorBoard switched on in run.*
        # Under torchrun: joins the process group; only rank 0 writes (self.is_main).
        self.dist, self.device = distributed.init(resolve_device(config.train.device))
        self.is_main = self.dist.is_main
        self.config, self.quiet = config, quiet or not self.is_main
        self.callbacks = (callbacks_from_config(config) + list(callbacks)) if self.is_main else []
        if self.dist.enabled and config.train.skip_nonfinite:
            raise ConfigError("train.skip_nonfinite cannot be used under torchrun (a process that "
                              "skips a step would stall the others' gradient exchange); drop it.")
        if resume:
            self.run_dir = Path(run_dir)
        else:
            if self.is_main:
                self.run_dir = Path(run_dir) if run_dir else new_run_dir(config, config_name)
                self.run_dir.mkdir(parents=True, exist_ok=True)
            self.run_dir = Path(distributed.broadcast_object(
                str(self.run_dir) if self.is_main else None, self.dist))
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.resume = resume

    # ----------------------------------------------------------------- data
    def _load_data(self):
        cfg = self.config
        train = load_split(cfg, "train")
        images, labels = as_nchw(train.images), train.labels.long()
        train_idx, val_idx = train_val_split(len(labels), cfg.data.val_size, cfg.data.split_seed)
        if cfg.data.train_subset:
            train_idx = train_idx[: cfg.data.train_subset]
        dev = self.device
        # uint8 on the device: a quarter of float32's memory, converted per batch.
        self.train_x, self.train_y = images[train_idx].to(dev), labels[train_idx].to(dev)
        self.val_x, self.val_y = images[val_idx].to(dev), labels[val_idx].to(dev)
        self.class_names = list(getattr(train, "classes", []))

    # ---------------------------------------------------------------- steps
    def _loss(self, out, images, labels):
        return loss_parts(out, images, labels, self.config.train.recon_weight, self.model)

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        return evaluate_model(self.eval_model, images, labels, self.config.train.recon_weight,
                              self.config.train.eval_batch_size,
                              transform=eval_transform_of(self.augment), amp_dtype=self.amp_dtype)

    def _train_epoch(self, epoch: int, log: MetricsLog) -> dict:
        cfg = self.config
        self.model.train()
        g = epoch_generator(cfg.train.seed, epoch, self.device)
        n, bs = len(self.train_y), cfg.train.batch_size
        perm = torch.randperm(n, generator=g, device=self.device)  # the same on every process
        # Under DDP each process augments its shard with its own draws.
        aug_g = (epoch_generator(cfg.train.seed + 1009 * self.dist.rank, epoch, self.device)
                 if self.dist.enabled else g)
        steps = distributed.steps_per_epoch(n, bs, self.dist)
        pending, sums = [], torch.zeros(5, device=self.device, dtype=torch.float64)
        bar = self._progress(steps, epoch)
        t0 = self._flushed_at = time.perf_counter()
        for step in range(steps):
            idx = distributed.shard(perm[step * bs:(step + 1) * bs], self.dist)
            x = self.augment(self.train_x[idx].float().div_(255), generator=aug_g)
            x = x.contiguous(memory_format=self.memory_format)
            y = self.train_y[idx]
            out = fastpath.forward(self.train_model, x, y, self.amp_dtype)
            loss, margin, recon = self._loss(out, x, y)
            self.optimizer.zero_grad(set_to_none=True)
            if cfg.train.skip_nonfinite and not torch.isfinite(loss):
                self.skipped_steps += 1  # opt-in: this check syncs with the device every step
                continue
            loss.backward()
            self.optimizer.step()
            lr = self.optimizer.param_groups[0]["lr"]
            if self.per_batch_schedule:
                self.scheduler.step()
            correct = (out.lengths.argmax(1) == y).sum()
            row = torch.stack([loss.detach(), margin.detach(), recon.detach(),
                               correct / len(y)]).double()
            sums += torch.cat([row * len(y), row.new_tensor([len(y)])])
            pending.append((step, lr, row))
            if len(pending) == cfg.train.log_every:
                self._flush(log, epoch, pending, bar)
                pending = []
        self._flush(log, epoch, pending, bar)
        sums = distributed.all_sum(sums, self.dist)  # images of every process
        seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        seen = sums[4].item()
        t = (sums[:4] / sums[4].clamp(min=1)).tolist()
        return {"train_loss": t[0], "train_margin": t[1], "train_recon": t[2], "train_acc": t[3],
                "epoch_seconds": seconds, "train_images_per_s": seen / seconds}

    def _flush(self, log: MetricsLog, epoch: int, pending: list, bar) -> None:
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
        records = [{"kind": "batch", "epoch": epoch, "step": step, "lr": lr, "loss": v[0],
                    "margin": v[1], "recon": v[2], "acc": v[3], "images_per_s": images_per_s}
                   for (step, lr, _), v in zip(pending, values)]
        log.write(records)
        self._emit("on_batches", records)
        if bar is not None:
            bar.update(len(records))
            bar.set_postfix(loss=f"{values[-1][0]:.4f}", acc=f"{values[-1][3]:.3f}")

    def _progress(self, steps: int, epoch: int):
        if self.quiet or not self.config.train.progress:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        return tqdm(total=steps, desc=f"epoch {epoch}/{self.config.train.epochs}", leave=False,
                    unit="batch", dynamic_ncols=True)

    def _diverged(self, epoch: int, cause: str):
        """Stop on a non-finite loss or weight; checkpoints on disk are from the last good epoch."""
        kept = (f"the last good weights (epoch {epoch - 1}) are in {self.ckpt_dir / 'last.pt'}"
                if (self.ckpt_dir / "last.pt").exists() else "no epoch had finished, so no "
                "checkpoint was written")
        raise EffcnError(f"training diverged: {cause} in epoch {epoch}; {kept}; lower optim.lr "
                         f"(or set train.skip_nonfinite=true to skip such steps) and retrain.")

    def _check_finite_weights(self, epoch: int):
        """A finite loss can still leave non-finite weights (the epoch's last step): never save them."""
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            self._diverged(epoch, "a weight became non-finite")

    # ----------------------------------------------------------- checkpoints
    def _state(self, epoch: int) -> dict:
        return {"model_name": self.model.model_name, "model_config": model_config_dict(self.model),
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": epoch, "best": self.best,
                "config": self.config.to_dict(), "class_names": self.class_names}

    def _setup(self):
        cfg = self.config
        torch.manual_seed(cfg.train.seed)
        self._load_data()
        from ..data.augment import build_augment
        self.augment = build_augment(cfg.data.augment)
        self.model = create_model(cfg.model.name, **cfg.model.args).to(self.device)
        # The model sees the images after the evaluation preprocessing (e.g. a centre crop).
        transform = eval_transform_of(self.augment)
        model_input = self.train_x[:1].float() / 255
        model_input = transform(model_input) if transform is not None else model_input
        check_compatible(self.model, model_input, torch.cat([self.train_y, self.val_y]),
                         cfg.data.dataset)
        self._setup_fast_path()
        self.optimizer = build_optimizer(cfg, self.model.parameters())
        steps = distributed.steps_per_epoch(len(self.train_y), cfg.train.batch_size, self.dist)
        self.scheduler, self.per_batch_schedule = build_schedule(cfg, self.optimizer, steps)
        self.best = {"epoch": 0, "val_acc": -1.0, "val_loss": float("inf")}
        self.start_epoch, self.skipped_steps = 1, 0
        if self.resume:
            state = load_checkpoint(self.ckpt_dir / "last.pt", map_location=self.device,
                                    expect_model=cfg.model.name)
            load_model_weights(self.model, state, self.ckpt_dir / "last.pt")
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.best, self.start_epoch = state["best"], state["epoch"] + 1
            if self.is_main:
                truncate_metrics(self.run_dir / "metrics.jsonl", state["epoch"])

    def _setup_fast_path(self):
        """AMP dtype, memory layout, DDP and compile (see fastpath.py / distributed.py).

        self.model stays the plain module (checkpoints, resume, callbacks); self.train_model is
        what the training step calls (DDP and/or compiled), self.eval_model what eval calls.
        """
        t = self.config.train
        self.amp_dtype = fastpath.amp_dtype(t.amp, self.device)
        self.precision = "bf16 autocast" if self.amp_dtype is not None else "fp32"
        self.memory_format = fastpath.memory_format(t.channels_last)
        fastpath.prepare_model(self.model, t.channels_last)
        ddp = distributed.wrap(self.model, self.dist, self.device, t.sync_batchnorm)
        self.train_model = fastpath.maybe_compile(ddp, t.compile, t.compile_mode)
        self.eval_model = fastpath.maybe_compile(self.model, t.compile, t.compile_mode)

    # ------------------------------------------------------------------ fit
    def fit(self) -> dict:
        """Train all epochs, then evaluate the best checkpoint on the test split once."""
        cfg = self.config
        self._wall_start, self._started = time.perf_counter(), datetime.now()
        try:
            self._setup()
        except BaseException:
            # A run that failed before writing anything (missing data, ...) leaves no folder.
            if not self.resume and self.is_main and self.run_dir.is_dir() \
                    and not any(self.run_dir.iterdir()):
                self.run_dir.rmdir()
            raise
        log = None
        if self.is_main:
            # On resume too: --set overrides (e.g. more epochs) must be what a later resume reads.
            save_yaml(cfg.to_dict(), self.run_dir / "config.yaml")
            env = environment(self.device)
            if self.resume and (self.run_dir / "env.json").is_file():  # keep the first start's
                first = json.loads((self.run_dir / "env.json").read_text())
                env = {**first, "resumes": first.get("resumes", []) + [env]}
            atomic_write_text(self.run_dir / "env.json", json.dumps(env, indent=2))
            log = MetricsLog(self.run_dir / "metrics.jsonl")
        self._say(f"run directory: {self.run_dir}  ({len(self.train_y)} train / "
                  f"{len(self.val_y)} val images, device {self.device}, {self.precision})")
        t_start = time.perf_counter()
        self._emit("on_fit_start")
        try:
            for epoch in range(self.start_epoch, cfg.train.epochs + 1):
                lr = self.optimizer.param_groups[0]["lr"]
                train = self._train_epoch(epoch, log)
                # One model on every process: each then validates on the whole split and
                # reaches the same best-epoch decision (duplicated work, no extra exchange).
                distributed.broadcast_buffers(self.model, self.dist)
                val = {f"val_{k}": v for k, v in self.evaluate(self.val_x, self.val_y).items()}
                record = {"kind": "epoch", "epoch": epoch, "lr": lr, **train, **val,
                          "skipped_steps": self.skipped_steps}
                improved = (val["val_acc"], -val["val_loss"]) > (self.best["val_acc"],
                                                                 -self.best["val_loss"])
                if improved:
                    self.best = {"epoch": epoch, "val_acc": val["val_acc"],
                                 "val_loss": val["val_loss"]}
                if not self.per_batch_schedule:
                    if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                        self.scheduler.step(val["val_acc"])
                    else:
                        self.scheduler.step()
                self._check_finite_weights(epoch)
                if self.is_main:
                    # The record goes first: a kill between the two writes leaves last.pt at
                    # the epoch before, and resume drops this record and redoes the epoch.
                    log.write([record])
                    state = self._state(epoch)
                    if improved:
                        save_checkpoint(self.ckpt_dir / "best.pt", state)
                    save_checkpoint(self.ckpt_dir / "last.pt", state)
                self._emit("on_epoch_end", record)
                self._say(f"epoch {epoch}/{cfg.train.epochs}  loss {train['train_loss']:.4f}  "
                          f"train acc {train['train_acc']:.4f}  val acc {val['val_acc']:.4f}  "
                          f"lr {lr:.2e}  {train['epoch_seconds']:.1f}s")
        finally:
            if log is not None:
                log.close()
        train_seconds = time.perf_counter() - t_start
        try:
            summary = self.finish(train_seconds) if self.is_main else None
            return distributed.broadcast_object(summary, self.dist)
        finally:
            distributed.shutdown(self.dist)

    def finish(self, train_seconds: float) -> dict:
        """Evaluate the best-validation weights on the test split and write summary.json."""
        state = load_checkpoint(self.ckpt_dir / "best.pt", map_location=self.device)
        load_model_weights(self.model, state)
        test = load_split(self.config, "test")
        test_x, test_y = as_nchw(test.images).to(self.device), test.labels.long().to(self.device)
        metrics = self.evaluate(test_x, test_y)
        summary = self.write_summary(train_seconds, {
            "test_acc": metrics["acc"], "test_loss": metrics["loss"],
            "test_margin": metrics["margin"], "test_recon": metrics["recon"],
            "test_images": len(test_y), "val_images": len(self.val_y)})
        self._say(f"test accuracy (best val epoch {summary['best_epoch']}): "
                  f"{summary['test_acc']:.4f} on {len(test_y)} test images")
        return summary

    def write_summary(self, train_seconds: float, test: dict) -> dict:
        """summary.json: the test figures of ``test`` inside the run's statistics (also for
        subclasses with their own test metric)."""
        summary = {
            "run": self.run_dir.name, "model": self.model.model_name,
            "dataset": self.config.data.dataset, "epochs": self.config.train.epochs,
            "best_epoch": self.best["epoch"], "best_val_acc": self.best["val_acc"], **test,
            "train_images": len(self.train_y), "train_seconds": train_seconds,
            "parameters": count_parameters(self.model),
            "parameters_without_decoder": count_parameters(self.model, include_decoder=False),
            "device": str(self.device), "precision": self.precision,
            # wall time of this fit() call: data loading, training, test evaluation
            "wall_seconds": time.perf_counter() - getattr(self, "_wall_start", time.perf_counter()),
            "started": getattr(self, "_started", datetime.now()).isoformat(timespec="seconds"),
            "finished": datetime.now().isoformat(timespec="seconds"),
            "resumed": self.resume,
        }
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        self._emit("on_fit_end", summary)
        return summary

    def _emit(self, event: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)

    def _say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)


def load_run_config(run_dir: str | Path) -> Config:
    """The resolved config saved in a run directory."""
    from .config import load_yaml
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise EffcnError(f"{run_dir} is not an effcn run directory (no config.yaml); pass the "
                         f"folder that effcn train created.")
    return config_from_dict(load_yaml(path))

