"""The run's metrics file: one JSON object per line (JSONL), per batch and per epoch.

Records carry ``kind`` ("batch" or "epoch"), ``epoch`` (1-based) and the figures. Lines are appended
whole and flushed; a reader ignores a trailing half-written line (a run killed mid-write), and a
resumed run drops the records of the epoch it is about to redo.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..io import atomic_write_text


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible as strings
    return value


class MetricsLog:
    """Appends records to ``path`` (created if missing)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, records: list[dict]) -> None:
        if not records:
            return
        self._file.write("".join(json.dumps({k: _clean(v) for k, v in r.items()}) + "\n"
                                 for r in records))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict]:
    """All complete records of ``path`` (optionally only one kind)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if kind is None or record.get("kind") == kind:
            records.append(record)
    return records


def truncate_metrics(path: str | Path, last_epoch: int) -> None:
    """Keep only records of epochs <= last_epoch (before resuming after last_epoch)."""
    path = Path(path)
    if not path.exists():
        return
    kept = [r for r in read_metrics(path) if r.get("epoch", 0) <= last_epoch]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
