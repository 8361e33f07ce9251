"""Optimizers and learning-rate schedules of a config (optim.* and schedule.*)."""

from __future__ import annotations

import torch


def build_optimizer(config, params) -> torch.optim.Optimizer:
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


def build_schedule(config, optimizer, steps_per_epoch: int):
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


def step_epoch_schedule(scheduler, val_acc: float) -> None:
    """Advance a per-epoch schedule after an epoch (plateau watches the validation accuracy)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_acc)
    else:
        scheduler.step()
