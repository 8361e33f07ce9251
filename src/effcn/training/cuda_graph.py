"""The whole training step as one CUDA graph (``train.cuda_graph``: auto | on | off).

On a GPU a step of the paper's model at batch 16 launches hundreds of small kernels and leaves
the device idle most of the time (on an H200: busy about 1 ms out of 12). :class:`GraphedStep` captures
:meth:`TrainStep.train <effcn.training.step.TrainStep.train>` -- batch composition and
augmentation from the device-resident uint8 data and an index tensor, forward, the task's loss,
backward, the optimizer step (:class:`~effcn.training.optim.CapturableAdam`: step count, learning
rate and Keras epsilon as device tensors), the EMA update and the running metric sums -- once
after a few eager warm-up steps (then undone), and replays it for every full batch. What a replay needs:

- fixed shapes: the graph serves the full batches; an epoch's last partial batch (if any) runs
  the same step eagerly (same tensors, same generator), so no second shape is captured;
- every random draw from one device generator registered with the graph; each epoch copies its
  (seed, epoch) generator's state into it, so step.pt's generator state stays exact;
- no host sync and no Python branch on a tensor's value (tests/test_tasks.py checks every task);
- the learning rate as a device tensor refreshed before each replay, so schedules need no
  re-capture.

``auto`` uses it on CUDA whenever :func:`graph_refusal` finds nothing against it; ``on`` where it
cannot be used raises ConfigError with that reason; on the CPU the step stays eager.
"""

from __future__ import annotations

import contextlib

import torch

from ..errors import ConfigError
from .fastpath import forward

WARMUP_STEPS = 3  # eager steps before the capture (cuDNN/cuBLAS choose their algorithms there)


def graph_refusal(config, device: torch.device, dist=None) -> str | None:
    """Why this run's step cannot be one CUDA graph (one clause), or None when it can."""
    t = config.train
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device and this run trains on {device}"
    if not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        return (f"torch {torch.__version__} cannot register the augmentation's generator with "
                f"a graph (CUDAGraph.register_generator_state is missing)")
    if t.skip_nonfinite:
        return "train.skip_nonfinite reads every step's loss back to the host, which a graph " \
               "cannot replay"
    if dist is not None and dist.enabled:
        return "the graph does not cover torchrun's gradient exchange (run seeds side by side " \
               "with effcn sweep --workers instead)"
    if t.compile:
        return "train.compile already compiles the model; use one of the two"
    if config.optim.name == "sgd" and config.schedule.name != "constant":
        return "SGD's learning rate is a constant of the graph, so a schedule would not reach it"
    return None


def use_cuda_graph(config, device: torch.device, dist=None) -> bool:
    """Whether to capture the step: train.cuda_graph and :func:`graph_refusal`."""
    setting = config.train.cuda_graph
    if setting == "off":
        return False
    refusal = graph_refusal(config, device, dist)
    if refusal is not None and setting == "on":
        raise ConfigError(f"train.cuda_graph=on is not possible here: {refusal}; set "
                          f"train.cuda_graph=auto (or off) to train eagerly.")
    return refusal is None


class GraphedStep:
    """:meth:`TrainStep.train` captured once and replayed (full batches of ``batch_size``).

    ``begin_epoch(generator, sums)`` copies the epoch's generator state and running sums into
    the graph's own (static) generator and sums tensor and returns those two, which the loop then
    uses (step.pt saves them); ``graphed(idx)`` runs one step on the item indices ``idx`` and
    returns a copy of its row. Every full batch is a replay: the warm-up steps a capture needs
    are undone (:meth:`_warm_up`), so a run resumed mid-training replays the same graph on the
    same state as the uninterrupted run does.
    """

    def __init__(self, step, ema, batch_size: int, device: torch.device,
                 warmup: int = WARMUP_STEPS):
        self.step, self.ema, self.batch_size = step, ema, batch_size
        self.warmup = max(1, warmup)
        self.generator = torch.Generator(device=device)
        self.idx = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.sums: torch.Tensor | None = None
        self.graph, self.row = None, None

    def begin_epoch(self, generator: torch.Generator, sums: torch.Tensor):
        self.generator.set_state(generator.get_state())
        if self.sums is None:
            self.sums = sums.clone()
        else:
            self.sums.copy_(sums)
        return self.generator, self.sums

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        if len(idx) != self.batch_size:  # the epoch's last partial batch: the same step, eagerly
            return self.step.train(idx, self.generator, self.sums, self.ema)
        self.idx.copy_(idx)
        if self.graph is None:
            self._warm_up()
            self._capture()
        refresh = getattr(self.step.optimizer, "refresh_lr", None)
        if refresh is not None:
            refresh()
        self.graph.replay()
        return self.row.clone()

    def _state_tensors(self) -> list[torch.Tensor]:
        """Everything a step changes in place: weights, buffers, the EMA's, the running sums."""
        model = self.step.model
        tensors = [*model.parameters(), *model.buffers(), self.sums]
        if self.ema is not None:
            tensors += [*self.ema.model.parameters(), *self.ema.model.buffers()]
        return tensors

    @torch.no_grad()
    def _warm_up(self) -> None:
        """A few eager steps on a side stream (as torch.cuda.graph asks: cuDNN and cuBLAS choose
        their algorithms, the optimizer makes its state, the augmentation its tables, which the
        capture must find: made inside it, every replay would make them again), then the state
        put back as it was: weights, buffers, EMA, sums, generator, optimizer state (state the
        warm-up made is zeroed: a fresh Adam's moments and step count are zeros)."""
        tensors = self._state_tensors()
        saved = [t.clone() for t in tensors]
        generator = self.generator.get_state()
        optimizer = self.step.optimizer
        had = {id(p): {k: v.clone() for k, v in optimizer.state[p].items() if torch.is_tensor(v)}
               for group in optimizer.param_groups for p in group["params"]
               if p in optimizer.state}
        cuda = self.idx.is_cuda  # (the CPU runs the same logic without a stream: the tests)
        side = torch.cuda.Stream() if cuda else None
        if cuda:
            side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side) if cuda else contextlib.nullcontext(), torch.enable_grad():
            for _ in range(self.warmup):
                self.step.train(self.idx, self.generator, self.sums, self.ema)
        if cuda:
            torch.cuda.current_stream().wait_stream(side)
        for t, value in zip(tensors, saved):
            t.copy_(value)
        self.generator.set_state(generator)
        for group in optimizer.param_groups:
            for p in group["params"]:
                for k, v in optimizer.state.get(p, {}).items():
                    if not torch.is_tensor(v):
                        continue
                    if k in had.get(id(p), {}):
                        v.copy_(had[id(p)][k])
                    else:  # (SGD's first step sets its momentum to the gradient: the same)
                        v.zero_()

    def _capture(self) -> None:
        """Record the step once (capturing runs nothing: the replay that follows is the step)."""
        torch.cuda.synchronize()
        self.step.optimizer.zero_grad(set_to_none=True)  # backward makes .grad in the graph's pool
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.generator)
        with torch.cuda.graph(graph):
            self.row = self.step.train(self.idx, self.generator, self.sums, self.ema)
        self.graph = graph


class GraphedForward:
    """An evaluation forward of ``model`` (fastpath.forward, no gradients) captured per input
    shape and replayed: ``graphed(x, y, amp_dtype)`` returns the graph's own output tensors,
    which the next call overwrites (training/evaluate.py consumes each batch's before that).
    Batches of a fixed shape (evaluate's ``fixed_shape``) need one graph per precision."""

    def __init__(self, model):
        self.model = model
        self.graphs = {}  # (x shape, y shape or None, dtype) -> (graph, x, y, output)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor | None, amp_dtype):
        key = (tuple(x.shape), None if y is None else tuple(y.shape), amp_dtype)
        if key not in self.graphs:
            static_x = x.clone()
            static_y = None if y is None else y.clone()
            side = torch.cuda.Stream()  # one eager warm-up on a side stream, then the capture
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                forward(self.model, static_x, static_y, amp_dtype)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = forward(self.model, static_x, static_y, amp_dtype)
            self.graphs[key] = (graph, static_x, static_y, out)
        graph, static_x, static_y, out = self.graphs[key]
        static_x.copy_(x)
        if static_y is not None:
            static_y.copy_(y)
        graph.replay()
        return out
