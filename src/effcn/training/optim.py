"""Optimizers and learning-rate schedules of a config (optim.* and schedule.*)."""

from __future__ import annotations

import math

import torch


def build_optimizer(config, params) -> torch.optim.Optimizer:
    """The configured optimizer; Adam/AdamW place epsilon as optim.eps_placement says."""
    o = config.optim
    if o.name in ("adam", "adamw"):
        cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
        optimizer = cls(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                        weight_decay=o.weight_decay, fused=o.fused)
        if o.eps_placement == "keras":
            keras_epsilon(optimizer)
        return optimizer
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def keras_epsilon(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Make a PyTorch Adam place epsilon where Keras' Adam does (the authors' optimizer).

    Keras: w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps). PyTorch divides by
    sqrt(v) / sqrt(1 - b2^t) + eps instead, so the same update needs PyTorch's epsilon to be
    eps / sqrt(1 - b2^t) at step t (3.2e-6 at step 1 for eps 1e-7 and b2 0.999; the first
    updates otherwise differ 1.3-4.4x). A hook sets it before every step, so the fused kernel
    keeps its speed; the Keras epsilon and the step count live in the param group, so they are
    saved in the optimizer's state dict and a resumed run continues exactly.
    """
    for group in optimizer.param_groups:
        group.setdefault("keras_eps", group["eps"])
        group.setdefault("keras_step", 0)

    def place_epsilon(opt, args, kwargs) -> None:
        for group in opt.param_groups:
            group["keras_step"] += 1
            beta2 = group["betas"][1]
            group["eps"] = group["keras_eps"] / math.sqrt(1 - beta2 ** group["keras_step"])

    optimizer.register_step_pre_hook(place_epsilon)
    return optimizer


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
