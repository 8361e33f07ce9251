"""File helpers at the bottom of the package: atomic writes and JSON files.

Every file effcn writes (checkpoints, configs, summaries, reports, downloads, figures) goes to a
temporary file in the same folder first and is then renamed into place, so a kill or a full disk
never leaves half a file where a whole one was.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename (never half a file).

    An OSError (full disk, read-only folder, ...) leaves ``path`` as it was and no temporary
    file; it is raised naming ``path`` (see errors.filesystem_error)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise writing_error(e, path) from None
        raise


def writing_error(err: OSError, path: str | Path) -> OSError:
    """``err`` naming ``path`` (not a temporary file or none) and marked as a write."""
    named = err if err.filename not in (None, "") and ".tmp" not in str(err.filename) \
        else type(err)(err.errno, err.strerror, str(path))
    named.effcn_action = "write"
    return named


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | Path, data) -> None:
    """``data`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(data, indent=2))


def read_json(path: str | Path) -> dict:
    """A JSON file's content; {} for a missing or unreadable (half-written) file."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def read_jsonl(path: str | Path) -> list[dict]:
    """Every complete record of a JSON-lines file, in order; [] for a missing file. A line that
    does not parse (cut short by a kill or a full disk) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
