"""The local-dataset base: search the roots, locate the files, download, verify checksums.

A :class:`LocalDataset` subclass is built as torchvision's are, ``X(root=None, split="train",
download=False)``, and states its files as class attributes; it supplies only how one file is
parsed (:meth:`LocalDataset.parse`) and how a split's arrays are assembled
(:meth:`LocalDataset._load`). The IDX datasets (MNIST, Fashion-MNIST, your own IDX folder) are one
family of subclasses (:class:`effcn.data.idx.IDXClassification`); smallNORB and CIFAR-10 are others.

A split is located by trying, in order, the folders of ``search_dirs(root)``; a folder is used
when it holds every file of the split, each as ``<file>`` or ``<file>.gz``. Checksums (SHA-256
or MD5) are of the decompressed content, so any gzip recompression is accepted.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from effcn.data.download import download_first
from effcn.errors import DataError

PathLike = Union[str, "os.PathLike[str]"]

GZIP_MAGIC = b"\x1f\x8b"


def cache_dir() -> Path:
    """Default data folder: ``$XDG_CACHE_HOME/effcn``, else ``~/.cache/effcn``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "effcn"


def dedupe_dirs(dirs: Sequence[Path]) -> List[Path]:
    """``dirs`` without repeats (compared as normalised paths), first occurrence kept."""
    seen, out = set(), []
    for d in dirs:
        key = os.path.normpath(str(d))
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def read_bytes(path: PathLike, *, what: str = "file", fix: str = "replace it with an intact copy",
               decompress: bool = True) -> bytes:
    """The content of ``path``, decompressed if it starts with the gzip magic bytes (and
    ``decompress``). ``what`` and ``fix`` shape the one-sentence DataError messages."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist; check the path or {fix}.") from None
    except OSError as e:
        raise DataError(f"{what} {path} cannot be read ({e.strerror or e}); check its permissions or {fix}.") from None
    if not decompress or raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise DataError(
            f"{what} {path} is truncated: its gzip stream ends early ({len(raw)} bytes on disk); {fix}."
        ) from None
    except (OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{what} {path} is not a valid gzip file ({e}); {fix}.") from None


class LocalDataset(Dataset):
    """A dataset read from local files, found by searching folders, optionally downloaded.

    Subclasses set the class attributes and implement :meth:`parse` and :meth:`_load`.
    ``images``: uint8 tensor (N, H, W) or (N, C, H, W); ``labels``: int64 tensor (N,); ``root``:
    the folder the files were found in. Items are ``(image uint8 (C, H, W), label int)``.
    """

    name: str = ""  # registry key and sub-folder name, e.g. "mnist"
    display_name: str = ""  # for messages, e.g. "MNIST"
    description: str = ""  # one line for `effcn datasets`
    files: Dict[str, Tuple[str, ...]] = {}  # split -> its files, without .gz
    sha256: Dict[str, str] = {}  # file -> SHA-256 of the (decompressed) content; missing -> not checked
    md5: Dict[str, str] = {}  # file -> MD5 of the (decompressed) content; missing -> not checked
    gzip_files: bool = True  # files may be gzip'd: read decompressed, fetched as <file>.gz
    mirrors: List[str] = []  # base URLs; a file is fetched from base + file (+ ".gz")
    classes: Optional[List[str]] = None
    image_size: Optional[Tuple[int, int]] = None  # (H, W)
    extra_dirs: List[str] = []  # searched last, e.g. system-wide dataset packages
    torchvision_dir: Optional[str] = None  # root/<this>/raw is searched; default name.upper()

    def __init__(self, root: Optional[os.PathLike] = None, split: str = "train", download: bool = False):
        if split not in self.files:
            raise DataError(
                f"{self._title()} has no split {split!r}; use one of {', '.join(map(repr, self.files))}."
            )
        self.split = split
        folder = self.locate(root, split)
        if folder is None:
            if not download or not self.mirrors:
                raise DataError(self._not_found_message(root, split))
            folder = self.download(root, split)
        self.root = folder
        images, labels = self._load(folder, split)
        self.images = torch.from_numpy(images)
        self.labels = torch.from_numpy(labels.astype(np.int64, copy=False))

    # ---- what a subclass supplies ---------------------------------------------------------
    @classmethod
    def parse(cls, data: bytes, path: PathLike, what: str, fix: str) -> np.ndarray:
        """One file's (decompressed) content -> its array; DataError (one sentence) if malformed."""
        raise NotImplementedError

    def _load(self, folder: Path, split: str) -> Tuple[np.ndarray, np.ndarray]:
        """Read and verify the split's files: images uint8 (N, [C,] H, W), labels integer (N,)."""
        raise NotImplementedError

    # ---- locating -------------------------------------------------------------------------
    @classmethod
    def search_dirs(cls, root: Optional[os.PathLike] = None) -> List[Path]:
        """Candidate folders, in search order.

        With ``root``: root, root/<name>, root/<NAME>/raw (torchvision's layout). Without:
        $EFFCN_DATA/<name> and $EFFCN_DATA if set, then the cache folder (see ``cache_dir``).
        ``extra_dirs`` come last in both cases.
        """
        if root is not None:
            r = Path(root).expanduser()
            dirs = [r, r / cls.name, r / (cls.torchvision_dir or cls.name.upper()) / "raw"]
        else:
            dirs = []
            env = os.environ.get("EFFCN_DATA")
            if env:
                e = Path(env).expanduser()
                dirs += [e / cls.name, e]
            dirs.append(cache_dir() / cls.name)
        return dedupe_dirs(dirs + [Path(d) for d in cls.extra_dirs])

    @staticmethod
    def find_file(folder: Path, filename: str) -> Optional[Path]:
        """``folder/filename`` or else ``folder/filename.gz`` if it is a file, else None."""
        for candidate in (folder / filename, folder / (filename + ".gz")):
            if candidate.is_file():
                return candidate
        return None

    @classmethod
    def locate(cls, root: Optional[os.PathLike] = None, split: str = "train") -> Optional[Path]:
        """The first folder of ``search_dirs(root)`` holding all files of ``split``, or None."""
        for folder in cls.search_dirs(root):
            if all(cls.find_file(folder, f) for f in cls.files[split]):
                return folder
        return None

    # ---- downloading ----------------------------------------------------------------------
    @classmethod
    def download(cls, root: Optional[os.PathLike] = None, split: str = "train") -> Path:
        """Download the missing files of ``split`` into ``search_dirs(root)[0]``; return that folder.

        Each file is parsed and its checksum verified before it is renamed into place.
        """
        folder = cls.search_dirs(root)[0]
        if not cls.mirrors:
            raise DataError(f"{cls._title()} cannot be downloaded; place its files in {folder} by hand.")
        suffix = ".gz" if cls.gzip_files else ""
        for fname in cls.files[split]:
            if cls.find_file(folder, fname) is None:
                download_first(
                    [m.rstrip("/") + "/" + fname + suffix for m in cls.mirrors],
                    folder / (fname + suffix),
                    check=cls._download_check(fname),
                )
        return folder

    @classmethod
    def _download_check(cls, fname: str) -> Callable[[Path], None]:
        what, fix = "downloaded file", "try another mirror"

        def check(path: Path) -> None:
            data = read_bytes(path, what=what, fix=fix, decompress=cls.gzip_files)
            cls.parse(data, path, what, fix)
            cls.verify(data, fname, path, what, fix)

        return check

    # ---- reading and verification ---------------------------------------------------------
    @classmethod
    def verify(cls, data: bytes, fname: str, path: PathLike, what: str, fix: str) -> None:
        """Check ``data`` (the file's content, decompressed) against the listed SHA-256 and MD5."""
        content = "decompressed " if cls.gzip_files else ""
        for label, table, algorithm in (("SHA-256", cls.sha256, "sha256"), ("MD5", cls.md5, "md5")):
            expected = table.get(fname)
            if expected:
                found = hashlib.new(algorithm, data).hexdigest()
                if found != expected:
                    raise DataError(
                        f"{what} {path} is corrupt or a different version: its {content}{label} "
                        f"starts with {found[:12]}, expected {expected[:12]}; {fix}."
                    )

    def _read(self, folder: Path, fname: str) -> np.ndarray:
        """One file of ``folder``: read, parsed, then verified against its checksum."""
        path = self.find_file(folder, fname)
        what, fix = f"{self._title()} file", self._fix()
        data = read_bytes(path, what=what, fix=fix, decompress=self.gzip_files)
        array = self.parse(data, path, what, fix)
        self.verify(data, fname, path, what, fix)
        return array

    @classmethod
    def _title(cls) -> str:
        return cls.display_name or cls.name or cls.__name__

    def _fix(self) -> str:
        if self.mirrors:
            return (
                "delete it and run again with download=True (CLI: --set data.download=true), "
                "or copy an intact file there"
            )
        return "replace it with an intact file"

    def _not_found_message(self, root: Optional[os.PathLike], split: str) -> str:
        names = ", ".join(f"{f}[.gz]" for f in self.files[split])
        dirs = self.search_dirs(root)
        partial = []
        for folder in dirs:
            have = [p.name for p in (self.find_file(folder, f) for f in self.files[split]) if p]
            if have:
                partial.append(f"{folder} holds only {', '.join(have)}")
        extra = f" ({'; '.join(partial)})" if partial else ""
        msg = (
            f"{self._title()} {split} files ({names}) not found in {', '.join(map(str, dirs))}{extra}; "
            f"pass root=/path/to/{self.name or 'data'} (CLI: --set data.root=...), set EFFCN_DATA"
        )
        if self.mirrors:
            return msg + ", or allow downloading with download=True (CLI: --set data.download=true)."
        return msg + "."

    # ---- Dataset protocol -----------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        """``(image uint8 (C, H, W), label)``; single-channel (N, H, W) images gain C = 1."""
        image = self.images[index]
        return (image.unsqueeze(0) if self.images.dim() == 3 else image), int(self.labels[index])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, n={len(self)}, root='{self.root}')"
