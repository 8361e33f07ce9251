"""Stopping on a scheduler's signal: SIGTERM (preemption, time limits) and SIGUSR1 (what Slurm
sends ahead of time with ``--signal=USR1@60``).

The handler only records the signal; the training loop looks after every batch (under torchrun:
every ``train.log_every`` batches, where the processes agree), writes a resumable mid-epoch
checkpoint (checkpoints/step.pt) and stops with exit status 143. ``effcn train --resume RUN``
continues from that batch exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)) if s)


class StopSignals:
    """Context manager: while inside, SIGTERM/SIGUSR1 set ``received`` instead of killing.

    Outside the main thread (where Python cannot install handlers) it does nothing."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        self.received = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
