"""Continuing a run: which checkpoint to resume from, loading it, and saving step.pt.

A run resumes from checkpoints/last.pt (the end of its last whole epoch) or, when it holds part
of the epoch after that one, from checkpoints/step.pt (written mid-epoch on SIGTERM or every
run.checkpoint_every_steps batches). Either continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError, EffcnError
from . import distributed
from .checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from .metrics import read_metrics, truncate_metrics
from .rundir import RunDir
from .runs import check_run_agrees
from .state import TrainState


def cannot_resume(run: RunDir) -> EffcnError:
    """The one error of a run that has nothing to resume from."""
    return EffcnError(f"cannot resume {run.path}: it has no checkpoints/last.pt (the run stopped "
                      f"before its first epoch ended); start a new run.")


def resumable_run(path: str | Path | RunDir) -> RunDir:
    """The run directory to continue, checked before anything is written: the one clear error
    when the folder holds no checkpoint at all, is no run directory, or holds a checkpoint
    (last.pt, step.pt, best.pt) that does not belong to it (training/runs.py disagreement)."""
    run = path if isinstance(path, RunDir) else RunDir(path)
    if run.path.is_dir() and not run.last.is_file() and not run.step.is_file():
        raise cannot_resume(run)
    run = RunDir.open(run)
    check_run_agrees(run, ("last", "step", "best"))
    return run


def resume_checkpoint(run: RunDir, model_name: str,
                      device: torch.device | str = "cpu") -> tuple[Path, dict]:
    """The checkpoint to resume from: step.pt when it is part of the epoch after last.pt's
    (a preempted or periodically saved epoch), else last.pt."""
    last = (load_checkpoint(run.last, map_location=device, expect_model=model_name)
            if run.last.is_file() else None)
    done = last["epoch"] if last else 0
    if run.step.is_file():
        step = load_checkpoint(run.step, map_location=device, expect_model=model_name)
        if step.get("mid_epoch", {}).get("epoch") == done + 1:
            return run.step, step
    if last is None:
        raise cannot_resume(run)
    return run.last, last


def resume_point(run: RunDir, model_name: str, device: torch.device | str = "cpu") -> str | None:
    """What --resume would continue from, in words (None: nothing to resume)."""
    try:
        path, ckpt = resume_checkpoint(run, model_name, device)
    except (EffcnError, OSError):
        return None
    if path == run.step:
        mid = ckpt["mid_epoch"]
        return f"checkpoints/step.pt holds epoch {mid['epoch']} up to batch {mid['step']}"
    return f"checkpoints/last.pt holds epoch {ckpt['epoch']}"


def restore(state: TrainState, run: RunDir, config, dist, device: torch.device) -> None:
    """Load the checkpoint to resume from into ``state``; rank 0 drops the metrics records
    written after it (they are trained again)."""
    path, ckpt = resume_checkpoint(run, config.model.name, device)
    load_model_weights(state.model, ckpt, path, weights="raw")
    if state.ema is not None:
        if ckpt.get("ema") is None:
            raise ConfigError(f"train.ema_decay={config.train.ema_decay} but {path} holds "
                              f"no averaged weights (the run trained without EMA); "
                              f"resume with --set train.ema_decay=0.")
        state.ema.load_state_dict(ckpt["ema"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    state.best, state.start_epoch = ckpt["best"], ckpt["epoch"] + 1
    state.skipped_steps = ckpt.get("skipped_steps", 0)
    state.mid_epoch = ckpt.get("mid_epoch")
    state.seconds_before = (ckpt["train_seconds"] if "train_seconds" in ckpt
                            else seconds_logged(run, ckpt))
    if state.mid_epoch and state.mid_epoch["world_size"] != dist.world_size:
        raise ConfigError(f"{path} was written by {state.mid_epoch['world_size']} "
                          f"process(es) in the middle of an epoch; resume it with as many "
                          f"(torchrun --nproc_per_node), or delete it to redo that epoch.")
    if dist.is_main:
        truncate_metrics(run.metrics_path, ckpt["epoch"],
                         state.mid_epoch["step"] if state.mid_epoch else 0)


def seconds_logged(run: RunDir, ckpt: dict) -> float:
    """A checkpoint from before train_seconds was saved: its epochs' logged training seconds
    (validation not included), plus the part of the epoch a step.pt holds."""
    if not run.metrics_path.is_file():
        return 0.0
    logged = sum(r.get("epoch_seconds", 0.0)
                 for r in read_metrics(run.metrics_path, kind="epoch")
                 if r["epoch"] <= ckpt["epoch"])
    return logged + (ckpt.get("mid_epoch") or {}).get("seconds", 0.0)


def save_step(run: RunDir, state: TrainState, config, dist, epoch: int, steps_done: int,
              epoch_lr: float, aug_g: torch.Generator, sums: torch.Tensor,
              seconds: float) -> None:
    """checkpoints/step.pt: everything needed to continue epoch ``epoch`` after ``steps_done``
    batches as if never stopped (every process's generator state and running sums; the
    epoch's starting lr, which a per-batch schedule has moved since)."""
    rng = distributed.all_gather_object(aug_g.get_state(), dist)
    sums = distributed.all_gather_object(sums.cpu(), dist)
    if dist.is_main:
        save_checkpoint(run.step, state.checkpoint(config, epoch - 1, mid_epoch={
            "epoch": epoch, "step": steps_done, "lr": epoch_lr, "rng": rng, "sums": sums,
            "seconds": seconds, "world_size": dist.world_size}))
    distributed.barrier(dist)  # nobody exits before rank 0 has written it
