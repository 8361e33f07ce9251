"""Optimizers and learning-rate schedules of a config (optim.* and schedule.*)."""

from __future__ import annotations

import math

import torch

from .fastpath import capturing


def build_optimizer(config, params, capturable: bool = False) -> torch.optim.Optimizer:
    """The configured optimizer; Adam/AdamW place epsilon as optim.eps_placement says.

    ``capturable``: Adam/AdamW as :class:`CapturableAdam` (step count, learning rate and the
    Keras epsilon as device tensors, so a CUDA graph can replay the step); SGD is capturable as
    it is (its momentum buffers are device tensors and its lr a Python float baked in at
    capture, so a graph run rejects schedules on SGD: see cuda_graph.graph_refusal).
    """
    o = config.optim
    if capturable and o.name in ("adam", "adamw"):
        return CapturableAdam(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                              weight_decay=o.weight_decay, decoupled=o.name == "adamw",
                              keras_eps=o.eps_placement == "keras")
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


class CapturableAdam(torch.optim.Adam):
    """Adam (or AdamW: ``decoupled``) whose whole step runs on the device, CUDA-graph safe.

    The step count is a device tensor per parameter (as torch's ``capturable=True`` Adam keeps
    it), the learning rate a device tensor per group refreshed from ``group["lr"]`` before every
    eager step and every graph replay (:meth:`refresh_lr`, a fill without a host sync), so
    schedules keep writing Python floats into the param groups and a captured graph picks their
    new value up. With ``keras_eps`` epsilon sits where Keras puts it: w -= lr sqrt(1 - b2^t) /
    (1 - b1^t) m / (sqrt(v) + eps), computed in that form (the fused kernel gets the same from
    :func:`keras_epsilon`'s eps_t = eps / sqrt(1 - b2^t), set from the host). The state dict is
    Adam's (exp_avg, exp_avg_sq, step), so checkpoints move between this and the fused Adam; results
    agree with it to float rounding, not bit for bit (the bias corrections are float32 here).
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False, keras_eps: bool = True):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         capturable=True, foreach=True)
        self.decoupled, self.keras_eps = decoupled, keras_eps
        self._lr = {}  # id(group) -> its lr as a () float32 device tensor
        for group in self.param_groups:  # the keys keras_epsilon keeps, so state dicts match
            group.setdefault("keras_eps", group["eps"])
            group.setdefault("keras_step", 0)

    def __getstate__(self) -> dict:  # Optimizer's keeps only defaults, state and param_groups
        return {**super().__getstate__(), "decoupled": self.decoupled, "keras_eps": self.keras_eps}

    def __setstate__(self, state: dict) -> None:
        # (load_state_dict passes only state and param_groups: then the flags stay as they are)
        self.decoupled = state.pop("decoupled", getattr(self, "decoupled", False))
        self.keras_eps = state.pop("keras_eps", getattr(self, "keras_eps", True))
        super().__setstate__(state)
        self._lr = {}

    def state_dict(self) -> dict:
        """Adam's state dict, with keras_step and the placed eps as :func:`keras_epsilon`
        keeps them (read from the device: checkpoints only), so the fused Adam resumes it."""
        state = super().state_dict()
        for group, saved in zip(self.param_groups, state["param_groups"]):
            # Loading a state dict sets these flags in the loading optimizer: save the eager
            # default's (optim.fused), so an eager resume of a graph run keeps the fused kernel.
            saved.update(capturable=False, foreach=None, fused=True)
            with_grad = [p for p in group["params"] if "step" in self.state[p]]
            if with_grad and self.keras_eps:
                t = int(self.state[with_grad[0]]["step"].item())
                saved["keras_step"] = t
                saved["eps"] = group["keras_eps"] / math.sqrt(1 - group["betas"][1] ** t)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._lr.clear()  # new group objects: their lr tensors are made again

    def refresh_lr(self) -> None:
        """Copy every group's (Python) lr into its device tensor; no host sync."""
        for group in self.param_groups:
            params = group["params"]
            t = self._lr.get(id(group))
            if t is None:
                t = self._lr[id(group)] = torch.zeros((), device=params[0].device)
            t.fill_(group["lr"])

    @torch.no_grad()
    def step(self, closure=None):
        """One step of every group from the device-resident state (no host sync)."""
        if closure is not None:
            raise ValueError("CapturableAdam.step takes no closure")
        if not capturing():  # a replay reads the tensors as they are:
            self.refresh_lr()  # the graph's owner refreshes them (cuda_graph.GraphedStep)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            for p in params:
                state = self.state[p]
                if not state:  # as torch's capturable Adam lays its state out
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            steps = [self.state[p]["step"] for p in params]
            m = [self.state[p]["exp_avg"] for p in params]
            v = [self.state[p]["exp_avg_sq"] for p in params]
            lr = self._lr[id(group)]
            beta1, beta2 = group["betas"]
            wd = group["weight_decay"]
            torch._foreach_add_(steps, 1)
            t = steps[0]  # every parameter of a group is stepped together
            bias1 = 1 - torch.pow(beta1, t)
            bias2_sqrt = (1 - torch.pow(beta2, t)).sqrt()
            if wd and self.decoupled:
                torch._foreach_mul_(params, 1 - lr * wd)
            elif wd:
                grads = torch._foreach_add(grads, params, alpha=wd)
            torch._foreach_lerp_(m, grads, 1 - beta1)
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, grads, grads, 1 - beta2)
            # A 0-d tensor added to a list syncs on CUDA, which a capture forbids (seen on an
            # H200): the tensor factors are multiplied and divided, the Python epsilons added.
            denom = torch._foreach_sqrt(v)
            if self.keras_eps:  # Keras: lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)
                torch._foreach_add_(denom, group["keras_eps"])
                step_size = lr * bias2_sqrt / bias1
            else:  # PyTorch: lr / (1 - b1^t) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
                torch._foreach_div_(denom, bias2_sqrt)
                torch._foreach_add_(denom, group["eps"])
                step_size = lr / bias1
            update = torch._foreach_div(m, denom)
            torch._foreach_mul_(update, step_size)
            torch._foreach_sub_(params, update)


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
