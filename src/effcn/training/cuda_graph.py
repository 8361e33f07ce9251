"""The whole training step as one CUDA graph (``train.cuda_graph``: auto | on | off).

On a GPU a step of the paper's model at batch 16 launches hundreds of small kernels and leaves
the device idle most of the time (on an H200: busy about 1 ms out of 12). :class:`GraphedStep` captures
:meth:`TrainStep.train <effcn.training.step.TrainStep.train>` -- batch composition and
augmentation from the device-resident uint8 data and an index tensor, forward, the task's loss,
backward, the optimizer step (:class:`~effcn.training.optim.CapturableAdam`: step count, learning
rate and Keras epsilon as device tensors), the EMA update and the running metric sums -- once
after a few eager warm-up steps, and replays it for every full batch. What a replay needs:

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
    returns a copy of its row.
    """

    def __init__(self, step, ema, batch_size: int, device: torch.device,
                 warmup: int = WARMUP_STEPS):
        # At least one eager step first: it makes the optimizer state, the learning-rate tensors
        # and the augmentation's tables, which a capture must find (made inside, a replay would
        # reset them).
        self.step, self.ema, self.batch_size = step, ema, batch_size
        self.warmup = max(1, warmup)
        self.generator = torch.Generator(device=device)
        self.idx = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.sums: torch.Tensor | None = None
        self.graph, self.row, self.eager_steps = None, None, 0

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
        if self.graph is None and self.eager_steps < self.warmup:
            self.eager_steps += 1
            side = torch.cuda.Stream()  # warm-up on a side stream, as torch.cuda.graph asks
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                row = self.step.train(idx, self.generator, self.sums, self.ema)
            torch.cuda.current_stream().wait_stream(side)
            return row
        if self.graph is None:
            self._capture()
        self.idx.copy_(idx)
        refresh = getattr(self.step.optimizer, "refresh_lr", None)
        if refresh is not None:
            refresh()
        self.graph.replay()
        return self.row.clone()

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
