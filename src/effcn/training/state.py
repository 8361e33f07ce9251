"""What a training run holds while it trains: built once, in :func:`build_state`.

The Trainer (training/trainer.py) builds one :class:`TrainState` when fit() starts, resume
(training/resume.py) loads a checkpoint into it, and the loop reads and advances it. Nothing else
about a run's progress lives anywhere else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..models import create_model
from . import distributed, fastpath
from .checkpoint import checkpoint_state
from .cuda_graph import GraphedForward, GraphedStep, use_cuda_graph
from .ema import EMA
from .environment import deterministic_kernels
from .optim import build_optimizer, build_schedule
from .splits import Split, load_train_val
from .step import TrainStep
from .tasks import Task


@dataclass
class RunData:
    """The training and validation splits (uint8 on the device), their sizes and class names."""
    train: Split
    val: Split
    class_names: list

    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def n_val(self) -> int:
        return len(self.val)


@dataclass
class TrainState:
    """The model and everything that advances with it, plus where the run stands.

    ``model`` is the plain module (checkpoints, callbacks); ``step`` calls the DDP / compiled
    one; ``eval_model`` is what validation evaluates (the EMA weights when kept). ``mid_epoch``:
    resuming from step.pt, where in its epoch to continue (consumed by the first epoch).
    ``seconds_before``: training seconds of the earlier sessions of a resumed run;
    ``fit_started``: perf_counter() when this session's epochs began (None before).
    """
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    per_batch_schedule: bool
    ema: EMA | None
    eval_model: torch.nn.Module
    step: TrainStep
    amp_dtype: torch.dtype | None
    data: RunData
    steps_per_epoch: int
    best: dict = field(default_factory=lambda: {"epoch": 0, "val_acc": -1.0,
                                                "val_loss": float("inf")})
    start_epoch: int = 1
    skipped_steps: int = 0
    mid_epoch: dict | None = None
    seconds_before: float = 0.0
    fit_started: float | None = None
    graph: GraphedStep | None = None  # train.cuda_graph: the step captured and replayed
    eval_graphs: dict = field(default_factory=dict)  # id(model) -> its GraphedForward

    def eval_forward(self, model) -> GraphedForward | None:
        """What evaluates ``model`` (evaluate's ``forward``): graph-captured under
        train.cuda_graph, else None (the eager forward)."""
        if self.graph is None:
            return None
        if id(model) not in self.eval_graphs:
            self.eval_graphs[id(model)] = GraphedForward(model)
        return self.eval_graphs[id(model)]

    def begin_epoch(self, generator: torch.Generator, sums: torch.Tensor):
        """(generator, sums) the epoch's steps use: the graph's own when it is captured."""
        if self.graph is None:
            return generator, sums
        return self.graph.begin_epoch(generator, sums)

    def train_step(self, idx: torch.Tensor, generator: torch.Generator,
                   sums: torch.Tensor) -> torch.Tensor | None:
        """One step on the item indices ``idx`` (training/step.py: TrainStep.train)."""
        if self.graph is not None:
            return self.graph(idx)
        return self.step.train(idx, generator, sums, self.ema)

    @property
    def precision(self) -> str:
        return fastpath.precision_name(self.amp_dtype)

    def train_seconds(self) -> float:
        """Seconds of training so far, earlier sessions of a resumed run included."""
        if self.fit_started is None:
            return self.seconds_before
        return self.seconds_before + time.perf_counter() - self.fit_started

    def checkpoint(self, config, epoch: int, **extra) -> dict:
        """A resumable checkpoint (last.pt, best.pt, step.pt) after ``epoch`` whole epochs."""
        return checkpoint_state(self.model, config, epoch, self.data.class_names,
                                self.optimizer, self.scheduler, self.best, self.ema,
                                skipped_steps=self.skipped_steps,
                                train_seconds=self.train_seconds(), **extra)


def build_state(config, task: Task, dist, device: torch.device) -> TrainState:
    """Seed, load the splits, build the model, optimizer, schedule, EMA and step, in this order
    (the order of random draws that resume and the tests rely on)."""
    t = config.train
    if t.deterministic:
        deterministic_kernels()
    torch.manual_seed(t.seed)
    train, val = load_train_val(config, device)
    task.setup(train, val)
    data = RunData(train, val, task.class_names(train))
    model = create_model(config.model.name, **config.model.args).to(device)
    task.check_model(model)
    # The fast path (fastpath.py, distributed.py): model stays the plain module; the step calls
    # DDP and/or the compiled model.
    amp_dtype = fastpath.amp_dtype(t.amp, device)
    fastpath.prepare_model(model, t.channels_last)
    ddp = distributed.wrap(model, dist, device, t.sync_batchnorm)
    graphed = use_cuda_graph(config, device, dist)
    optimizer = build_optimizer(config, model.parameters(), capturable=graphed)
    ema = EMA(model, t.ema_decay) if t.ema_decay else None
    # what validation (and so selection) evaluates: the averaged weights when kept
    eval_model = fastpath.maybe_compile(ema.model if ema else model, t.compile, t.compile_mode)
    step = TrainStep(model, task, optimizer, amp_dtype, fastpath.memory_format(t.channels_last),
                     fastpath.maybe_compile(ddp, t.compile, t.compile_mode), t.skip_nonfinite)
    steps_per_epoch = distributed.steps_per_epoch(task.epoch_size, t.batch_size, dist)
    scheduler, per_batch = build_schedule(config, optimizer, steps_per_epoch)
    graph = GraphedStep(step, ema, t.batch_size, device) if graphed else None
    return TrainState(model=model, optimizer=optimizer, scheduler=scheduler,
                      per_batch_schedule=per_batch, ema=ema, eval_model=eval_model, step=step,
                      amp_dtype=amp_dtype, data=data, steps_per_epoch=steps_per_epoch,
                      graph=graph)
