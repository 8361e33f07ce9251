"""An exponential moving average of the weights (``train.ema_decay``, off at 0).

After every optimizer step: ema = decay * ema + (1 - decay) * weights, for every parameter;
buffers (BatchNorm statistics) are copied. When it is on, the averaged weights are the ones
validated, selected (best.pt), tested and evaluated; the raw weights stay what the optimizer
trains and what resume continues from. Both are saved in every checkpoint ("model" and "ema").
"""

from __future__ import annotations

import copy

import torch


class EMA:
    """The averaged copy of ``model`` (its own module, in eval mode, without gradients)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._pairs = None

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One step of the average towards ``model``'s current weights (no host sync)."""
        if self._pairs is None:
            self._pairs = ([p for p in self.model.parameters()], [p for p in model.parameters()],
                           [b for b in self.model.buffers()], [b for b in model.buffers()])
        ema_p, p, ema_b, b = self._pairs
        torch._foreach_lerp_(ema_p, p, 1 - self.decay)  # under no_grad: no detached copies
        for target, source in zip(ema_b, b):
            target.copy_(source)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
