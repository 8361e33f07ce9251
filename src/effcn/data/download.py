"""Download and archive helpers: checksums, atomic downloads with mirrors, safe tar extraction."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Union

from effcn._version import __version__
from effcn.errors import DataError, filesystem_error
from effcn.io import writing_error

PathLike = Union[str, "os.PathLike[str]"]
Check = Callable[[Path], None]

_CHUNK = 1 << 20
USER_AGENT = f"effcn/{__version__}"


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: PathLike) -> str:
    """Hex SHA-256 digest of the file's bytes as stored (no decompression)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _reason(e: BaseException) -> str:
    """A short phrase for why a download failed."""
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        e = e.reason if isinstance(e.reason, BaseException) else OSError(str(e.reason))
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(e, DataError):
        return str(e).rstrip(".")
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _fetch(url: str, dest: Path, timeout: float) -> None:
    """Stream ``url`` into ``dest``; raise on HTTP errors or a body shorter than Content-Length."""
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(dest, "wb") as f:
        length = resp.headers.get("Content-Length")
        n = 0
        for chunk in iter(lambda: resp.read(_CHUNK), b""):
            f.write(chunk)
            n += len(chunk)
    # http.client returns b"" instead of raising when the connection drops early.
    if length is not None and length.isdigit() and n != int(length):
        raise DataError(f"the connection closed after {n} of {length} bytes")


def _try_download(url: str, dest: Path, timeout: float, check: Optional[Check]) -> Optional[str]:
    """Download ``url`` via a temporary file, check it, rename it to ``dest``.

    Returns None on success, else the reason of the failure; the temporary file is always gone.
    """
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"Cannot create folder {dest.parent} for {dest.name} ({e.strerror or e}); choose a writable data folder."
        ) from None
    tmp = dest.with_name(f"{dest.name}.part-{os.getpid()}")
    try:
        _fetch(url, tmp, timeout)
        if check is not None:
            check(tmp)
        os.replace(tmp, dest)
        return None
    # ValueError: malformed URL or unknown scheme; HTTPException (e.g. a bad status line) is no OSError.
    except (OSError, ValueError, DataError, http.client.HTTPException) as e:
        if isinstance(e, OSError) and not isinstance(e, urllib.error.URLError) \
                and filesystem_error(e) is not None:
            raise writing_error(e, dest) from None  # a full disk: no other mirror will help
        return _reason(e)
    finally:
        if tmp.exists():
            tmp.unlink()


def download_url(url: str, dest_path: PathLike, timeout: float = 30, check: Optional[Check] = None) -> Path:
    """Download ``url`` to ``dest_path`` atomically; return ``dest_path``.

    Streams to ``<dest_path>.part-<pid>`` in the same folder, runs ``check(tmp_path)`` (which
    raises ``DataError`` on wrong content) and only then renames it over ``dest_path``. On any
    failure the temporary file is removed and ``dest_path`` is left as it was.
    """
    dest = Path(dest_path)
    reason = _try_download(url, dest, timeout, check)
    if reason is not None:
        raise DataError(
            f"Download of {url} to {dest} failed: {reason}; check the network connection, "
            f"or download the file by hand and place it at {dest}."
        )
    return dest


def download_first(urls: Iterable[str], dest_path: PathLike, check: Optional[Check] = None, timeout: float = 30) -> Path:
    """Download ``dest_path`` from the first of ``urls`` (mirrors, in order) that works and passes ``check``.

    A download that fails ``check`` never replaces an existing ``dest_path``. When all fail, the
    ``DataError`` lists every URL with its reason and how to place the file by hand.
    """
    dest = Path(dest_path)
    failures: List[str] = []
    for url in urls:
        reason = _try_download(url, dest, timeout, check)
        if reason is None:
            return dest
        failures.append(f"{url} ({reason})")
    tried = "; ".join(failures) if failures else "no download URLs are known"
    raise DataError(
        f"Could not download {dest.name}: {tried}; download it by hand from one of these URLs "
        f"and place it at {dest}, then run again."
    )


def safe_extract_tar(archive: PathLike, target_dir: PathLike) -> List[str]:
    """Extract a (possibly compressed) tar archive into ``target_dir``; return the member names.

    Every member is checked before anything is written: names that resolve outside
    ``target_dir`` (``../x``, absolute paths, paths through symlinks) and members that are not
    regular files or folders (links, devices, fifos) are refused with a ``DataError``.
    """
    archive = Path(archive)
    target = Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(target)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                if not (m.isfile() or m.isdir()):
                    kind = "link" if (m.issym() or m.islnk()) else "special file"
                    raise DataError(
                        f"Archive {archive} contains member {m.name!r}, a {kind}, which is refused for safety; "
                        "delete the archive and download it again from the official source."
                    )
                resolved = os.path.realpath(os.path.join(root, m.name))
                if os.path.commonpath([root, resolved]) != root:
                    raise DataError(
                        f"Archive {archive} contains member {m.name!r} that would be written outside {target}; "
                        "delete the archive and download it again from the official source."
                    )
            if hasattr(tarfile, "data_filter"):
                tar.extractall(root, members=members, filter="data")
            else:  # Python < 3.12 without the 3.11.4+/3.10.12+ backport
                tar.extractall(root, members=members)
    except (tarfile.TarError, EOFError) as e:
        raise DataError(
            f"Archive {archive} is corrupt or truncated ({e}); delete it and download it again."
        ) from None
    return [m.name for m in members]
