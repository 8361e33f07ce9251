"""The run's metrics file: one JSON object per line (JSONL), per batch and per epoch.

Records carry ``kind`` ("batch" or "epoch"), ``epoch`` (1-based) and the figures. Lines are appended
whole and flushed; a reader ignores a trailing half-written line (a run killed mid-write), and a
resumed run drops the records of the epoch it is about to redo.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..io import atomic_write_text, read_jsonl, writing_error


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible as strings
    return value


class MetricsLog:
    """Appends records to ``path`` (created if missing)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise writing_error(e, self.path) from None

    def write(self, records: list[dict]) -> None:
        """Append whole lines (a full disk may cut the last one: readers skip it)."""
        if not records:
            return
        try:
            self._file.write("".join(json.dumps({k: _clean(v) for k, v in r.items()}) + "\n"
                                     for r in records))
            self._file.flush()
        except OSError as e:
            raise writing_error(e, self.path) from None

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass  # a flush that failed already raised; the lines it held are lost either way


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict]:
    """All complete records of ``path`` (optionally only one kind)."""
    return [r for r in read_jsonl(path) if kind is None or r.get("kind") == kind]


def truncate_metrics(path: str | Path, last_epoch: int, steps_into_next: int = 0) -> None:
    """Keep only records of epochs <= last_epoch, and the first ``steps_into_next`` batch
    records of the epoch after (before resuming from there)."""
    path = Path(path)
    if not path.exists():
        return

    def kept_record(r: dict) -> bool:
        epoch = r.get("epoch", 0)
        return epoch <= last_epoch or (epoch == last_epoch + 1 and r.get("kind") == "batch"
                                       and r.get("step", steps_into_next) < steps_into_next)
    kept = [r for r in read_metrics(path) if kept_record(r)]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
