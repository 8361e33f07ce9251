"""The one training step, and the generator each epoch draws its shuffling and augmentation from.

The trainer (training/trainer.py) calls :class:`TrainStep` once per batch; ``effcn bench``
(tools/bench.py) times the same object. A step takes a composed batch and returns a detached row
on the device: it reads nothing back from the device except the optional ``skip_nonfinite``
check, so :meth:`TrainStep.train` (batch, step, EMA, running sums) is what a CUDA graph
captures (training/cuda_graph.py).
"""

from __future__ import annotations

import torch

from . import fastpath
from .tasks import Batch, Task


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

    def forward_loss(self, batch: Batch):
        """(batch in the step's memory format, the model's output, the task's loss parts), with
        the gradients cleared: the step up to its backward."""
        batch = batch._replace(x=batch.x.contiguous(memory_format=self.memory_format))
        out = fastpath.forward(self.forward_model, batch.x,
                               self.task.decoder_labels(batch, training=True), self.amp_dtype)
        parts = self.task.loss(self.model, out, batch)
        self.optimizer.zero_grad(set_to_none=True)
        return batch, out, parts

    def __call__(self, batch: Batch) -> torch.Tensor | None:
        batch, out, (loss, margin, recon, *extra) = self.forward_loss(batch)
        if self.skip_nonfinite and not torch.isfinite(loss):
            return None
        loss.backward()
        self.optimizer.step()
        acc = self.task.hits(out, batch).mean()
        return torch.stack([loss.detach(), margin.detach(), recon.detach(), acc,
                            *(e.detach() for e in extra)]).double()

    def train(self, idx: torch.Tensor, generator: torch.Generator, sums: torch.Tensor,
              ema=None) -> torch.Tensor | None:
        """The whole step of the training loop, as training/cuda_graph.py captures it: compose
        the batch of item indices ``idx`` (B,) with ``generator``, step, move ``ema``
        (training/ema.py) and add the row weighted by its images, then the image count, to
        ``sums`` (float64, in place). Returns the row (None: a skipped step); no host sync."""
        row = self(self.task.train_batch(idx, generator))
        if row is None:
            return None
        if ema is not None:
            ema.update(self.model)
        images = torch.full((1,), len(idx), dtype=row.dtype, device=row.device)
        sums += torch.cat([row * len(idx), images])
        return row
