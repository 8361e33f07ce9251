"""File helpers at the bottom of the package: atomic writes, JSON files and the run lock.

Every file effcn writes (checkpoints, configs, summaries, reports, downloads, figures) goes to a
temporary file in the same folder first and is then renamed into place, so a kill or a full disk
never leaves half a file where a whole one was. A process that writes a run directory holds
the run's lock (:class:`RunLock`), so a second writer is refused instead of interleaving its
files with the first one's.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import tempfile
import threading
import warnings
from datetime import datetime, timezone
from pathlib import Path

from .errors import RunLocked

try:
    import fcntl
except ImportError:  # Windows: no POSIX record locks; runs are written unlocked (a warning)
    fcntl = None

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


# ----------------------------------------------------------------------------- the run lock
LOCK_NAME = ".lock"
# errnos of a file system that has no locks (e.g. NFS without lockd, some FUSE mounts)
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.ENOTSUP}
_HELD: dict[str, "RunLock"] = {}  # realpath of a lock file -> its holder in this process
_HELD_GUARD = threading.Lock()
_warned_no_locks = False


class RunLockWarning(UserWarning):
    """The run's file system has no locks: the run is written without one."""


class RunLock:
    """The exclusive lock of one run directory, held while a process writes it.

    ``with RunLock(run_dir):`` takes an OS-level POSIX lock (``fcntl.lockf``, which NFS supports
    through lockd) on ``run_dir/.lock`` and records the holder (pid, host, start time, command)
    in that file; leaving the block removes the file and releases the lock. A process that dies
    (even by SIGKILL) releases it with its file descriptors, so a stale ``.lock`` file never
    blocks anyone. A second writer, in another process or this one, gets :class:`RunLocked`:
    one sentence naming the holder and what to do. Where the file system has no locks the run
    is written unlocked after one :class:`RunLockWarning`. Readers never take the lock.

    ``enabled=False`` makes it a no-op (ranks other than 0 under torchrun write nothing).
    """

    def __init__(self, run_dir: str | Path, command: str = "effcn train", enabled: bool = True):
        self.run_dir, self.path = Path(run_dir), Path(run_dir) / LOCK_NAME
        self.command, self.enabled = command, enabled
        self._fd: int | None = None
        self._key: str | None = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock (never waits): RunLocked when another writer holds it."""
        if not self.enabled or self.held:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
        with _HELD_GUARD:
            if key in _HELD:  # POSIX locks do not exclude their own process: check it here
                raise RunLocked(refusal(self.run_dir, _HELD[key].holder))
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
                try:
                    if not _lock(fd, self.run_dir):  # no locks here: written unlocked
                        if os.fstat(fd).st_size == 0:  # the empty file just made: no trace
                            os.unlink(self.path)
                        os.close(fd)
                        return
                except BaseException:
                    os.close(fd)
                    raise
                # A holder that released removes the file: retry on the new one (its inode).
                try:
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            self.holder = {"pid": os.getpid(), "host": socket.gethostname(),
                           "since": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
                           "command": self.command}
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(self.holder).encode())
            self._fd, self._key = fd, key
            _HELD[key] = self

    def release(self) -> None:
        """Remove the lock file and release the lock (idempotent)."""
        if self._fd is None:
            return
        with _HELD_GUARD:
            try:
                os.unlink(self.path)  # while still locked: nobody can take a file then unlinked
            except OSError:
                pass
            os.close(self._fd)  # releases the POSIX lock
            _HELD.pop(self._key, None)
            self._fd = self._key = None


def _lock(fd: int, run_dir: Path) -> bool:
    """lockf(fd) without waiting: True when taken, False where the file system has no locks
    (warned once per process); RunLocked naming the holder when another process holds it."""
    global _warned_no_locks
    try:
        if fcntl is None:
            raise OSError(errno.ENOSYS, "no fcntl on this platform")
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EAGAIN):
            raise RunLocked(refusal(run_dir, _holder_in(fd))) from None
        if e.errno not in _NO_LOCKS:
            raise
        if not _warned_no_locks:
            _warned_no_locks = True
            warnings.warn(f"the file system of {run_dir} has no file locks ({e.strerror}): "
                          f"effcn cannot stop a second process from writing the same run, so "
                          f"start one writer per run yourself.", RunLockWarning, stacklevel=4)
        return False


def _holder_in(fd: int) -> dict:
    """The holder recorded in a lock file ({} while it is being written)."""
    try:
        return json.loads(os.pread(fd, 4096, 0).decode())
    except (OSError, ValueError):
        return {}


def refusal(run_dir: str | Path, holder: dict) -> str:
    """The one sentence that refuses a second writer of ``run_dir``."""
    pid, host = holder.get("pid", "?"), holder.get("host", "?")
    who = f"process {pid} on {host}" + (f" since {holder['since']}" if holder.get("since") else "")
    what = f" ({holder['command']})" if holder.get("command") else ""
    return (f"{run_dir} is being written by {who}{what}, and a run has one writer at a time; "
            f"wait for it to finish or stop it (kill {pid} on {host}), then try again (if that "
            f"process is gone, its lock is free by itself).")


def run_lock_holder(run_dir: str | Path) -> dict | None:
    """Who holds ``run_dir``'s lock ({pid, host, since, command}), or None when it is free.

    Tests the lock without taking it; a lock held by this process is answered from memory (for
    POSIX locks, opening and closing the file here would release it)."""
    path = Path(run_dir) / LOCK_NAME
    with _HELD_GUARD:
        key = os.path.realpath(path)
        if key in _HELD:
            return dict(_HELD[key].holder)
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:  # no lock file, or one this process may not lock (a read-only folder)
            return None
        try:
            if fcntl is None:
                return None
            try:  # a test, not a lock: a writer taking the lock meanwhile is never refused
                os.lockf(fd, os.F_TEST, 0)
            except OSError as e:
                if e.errno in (errno.EACCES, errno.EAGAIN):
                    return _holder_in(fd) or {}
                if e.errno in _NO_LOCKS:
                    return None
                raise
            return None
        finally:
            os.close(fd)


def wait_for_run_lock(run_dir: str | Path, timeout: float, poll: float = 1.0) -> None:
    """Return once nobody holds ``run_dir``'s lock; RunLocked (naming the holder) after
    ``timeout`` seconds of waiting."""
    import time
    deadline = time.monotonic() + timeout
    while (holder := run_lock_holder(run_dir)) is not None:
        if time.monotonic() >= deadline:
            raise RunLocked(refusal(run_dir, holder))
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))


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
