"""The one exception type for mistakes a user can cause and fix.

The CLI prints ``EffcnError`` messages as one sentence without a traceback and exits with the
error's ``exit_status`` (2; 130 for an interrupted training, 143 for a preempted one); anything
else is a bug and keeps its traceback. File-system faults (a full disk, a read-only folder, a file
where a folder should be) are the user's to fix too: :func:`filesystem_error` turns such an
``OSError`` into one sentence naming the path, the cause and the way out.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


class EffcnError(Exception):
    """A user-fixable problem: the message names the cause and the fix."""

    exit_status = 2


class DataError(EffcnError):
    """Missing, truncated or corrupt data files, failed downloads."""


class ConfigError(EffcnError):
    """Unknown config keys, wrong types, out-of-range values."""


class CheckpointError(EffcnError):
    """Checkpoints that are corrupt, unsafe, or belong to another model."""


class Interrupted(EffcnError):
    """Training stopped by Ctrl-C; the message says where and how to resume."""

    exit_status = 130


class Preempted(EffcnError):
    """Training stopped by SIGTERM or SIGUSR1 after writing a resumable mid-epoch checkpoint."""

    exit_status = 143  # 128 + SIGTERM, what schedulers expect of a job that stopped on SIGTERM


class FileSystemError(EffcnError):
    """A file or folder could not be read or written (full disk, read-only, permissions, ...)."""


class RunLocked(EffcnError):
    """Another live process writes the run (it holds the run's lock, effcn.io.RunLock)."""


# errno -> (what happened, what to do); an OSError with any other errno is not described.
_FILESYSTEM_CAUSES = {
    errno.ENOSPC: ("no space is left on the device", "free space"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space or raise the quota"),
    errno.EROFS: ("the file system is read-only", "make it writable (or use another folder)"),
    errno.EACCES: ("permission was denied", "fix the permissions or use another folder"),
    errno.EPERM: ("the operation is not permitted", "fix the permissions or use another folder"),
    errno.ENOTDIR: ("a file stands where a folder is expected", "move that file or choose "
                    "another path"),
    errno.EEXIST: ("a file stands where a folder is expected", "move that file or choose "
                   "another path"),
    errno.EISDIR: ("a folder stands where a file is expected", "move that folder or choose "
                   "another path"),
}


def filesystem_error(err: OSError, way_out: str | None = None) -> FileSystemError | None:
    """One sentence for a file-system fault (path, cause, way out), or None for other OSErrors.

    ``way_out`` replaces the generic advice, e.g. "{fix} and resume with effcn train --resume
    RUN", where ``{fix}`` is the generic advice. An error raised by effcn's own writers carries
    ``effcn_action`` ("write"), which the sentence names."""
    if err.errno not in _FILESYSTEM_CAUSES:
        return None
    cause, fix = _FILESYSTEM_CAUSES[err.errno]
    path = err.filename if err.filename is not None else "a file"
    if err.errno in (errno.ENOTDIR, errno.EEXIST) and err.filename is not None:
        in_the_way = _file_in_the_way(os.fsdecode(err.filename))
        if in_the_way:
            cause = f"{in_the_way} is a file, not a folder"
    if err.filename2 is not None:
        path = f"{err.filename} -> {err.filename2}"
    advice = way_out.format(fix=fix) if way_out else fix
    action = getattr(err, "effcn_action", "use")
    return FileSystemError(f"could not {action} {path}: {cause} ({err.strerror}); {advice}.")


def _file_in_the_way(path: str) -> str | None:
    """The first of ``path`` and its parents that exists and is not a folder."""
    for p in (Path(path), *Path(path).parents):
        if p.exists():
            return None if p.is_dir() else str(p)
    return None
