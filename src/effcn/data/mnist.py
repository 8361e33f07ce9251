"""MNIST and other image-classification datasets stored as IDX files (MNIST's file layout).

A dataset is located by trying, in order, the folders of ``search_dirs(root)``; a folder is used
when it holds every file of the split, each as ``<file>`` or ``<file>.gz``. Files are verified
against the SHA-256 of their decompressed content, so any gzip recompression is accepted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from effcn.data.download import download_first, sha256_bytes
from effcn.data.idx import parse_idx, read_idx_bytes
from effcn.errors import DataError

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def cache_dir() -> Path:
    """Default data folder: ``$XDG_CACHE_HOME/effcn``, else ``~/.cache/effcn``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "effcn"


def _dedupe(dirs: Sequence[Path]) -> List[Path]:
    seen, out = set(), []
    for d in dirs:
        key = os.path.normpath(str(d))
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


class IDXClassification(Dataset):
    """Images and labels in IDX files, MNIST's layout; subclasses set the class attributes.

    ``images``: uint8 tensor (N, H, W); ``labels``: int64 tensor (N,); ``root``: the folder
    the files were found in. Items are ``(image uint8 (1, H, W), label int)``.
    """

    name: str = ""  # registry key and sub-folder name, e.g. "mnist"
    display_name: str = ""  # for messages, e.g. "MNIST"
    description: str = ""  # one line for `effcn datasets`
    files: Dict[str, Tuple[str, str]] = MNIST_FILES  # split -> (images file, labels file), without .gz
    sha256: Dict[str, str] = {}  # file -> SHA-256 of the decompressed content; missing -> not checked
    mirrors: List[str] = []  # base URLs; a file is fetched from base + file + ".gz"
    classes: Optional[List[str]] = None
    image_size: Optional[Tuple[int, int]] = (28, 28)  # (H, W)
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
        return _dedupe(dirs + [Path(d) for d in cls.extra_dirs])

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

        Each file is checked (decompressed SHA-256) before it is renamed into place.
        """
        folder = cls.search_dirs(root)[0]
        if not cls.mirrors:
            raise DataError(f"{cls._title()} cannot be downloaded; place its files in {folder} by hand.")
        for fname in cls.files[split]:
            if cls.find_file(folder, fname) is None:
                download_first(
                    [m.rstrip("/") + "/" + fname + ".gz" for m in cls.mirrors],
                    folder / (fname + ".gz"),
                    check=cls._download_check(fname),
                )
        return folder

    @classmethod
    def _download_check(cls, fname: str):
        expected = cls.sha256.get(fname)

        def check(path: Path) -> None:
            data = read_idx_bytes(path, what="downloaded file", fix="try another mirror")
            if expected:
                found = sha256_bytes(data)
                if found != expected:
                    raise DataError(
                        f"its decompressed SHA-256 starts with {found[:12]}, expected {expected[:12]}"
                    )
            else:
                parse_idx(data, path, what="downloaded file", fix="try another mirror")

        return check

    # ---- loading and verification ---------------------------------------------------------
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

    def _read(self, folder: Path, fname: str) -> np.ndarray:
        path = self.find_file(folder, fname)
        what, fix = f"{self._title()} file", self._fix()
        data = read_idx_bytes(path, what=what, fix=fix)
        array = parse_idx(data, path, what=what, fix=fix)
        expected = self.sha256.get(fname)
        if expected:
            found = sha256_bytes(data)
            if found != expected:
                raise DataError(
                    f"{what} {path} is corrupt or a different version: its decompressed SHA-256 starts "
                    f"with {found[:12]}, expected {expected[:12]}; {fix}."
                )
        return array

    def _load(self, folder: Path, split: str) -> Tuple[np.ndarray, np.ndarray]:
        """Read and verify the split's files: images uint8 (N, H, W), labels integer (N,)."""
        img_name, lbl_name = self.files[split]
        images, labels = self._read(folder, img_name), self._read(folder, lbl_name)
        title, fix = self._title(), self._fix()
        img_path, lbl_path = self.find_file(folder, img_name), self.find_file(folder, lbl_name)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(
                f"{title} file {img_path} holds {images.dtype} values of shape {images.shape}, expected "
                f"uint8 images of shape (N, H, W); {fix}."
            )
        if self.image_size is not None and tuple(images.shape[1:]) != tuple(self.image_size):
            h, w = self.image_size
            raise DataError(
                f"{title} file {img_path} holds {images.shape[1]}x{images.shape[2]} images, expected {h}x{w}; {fix}."
            )
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise DataError(
                f"{title} file {lbl_path} holds {labels.dtype} values of shape {labels.shape}, expected "
                f"integer labels of shape (N,); {fix}."
            )
        if len(images) != len(labels):
            raise DataError(
                f"{title} files {img_path} and {lbl_path} do not match: {len(images)} images but "
                f"{len(labels)} labels; {fix}."
            )
        n_classes = len(self.classes) if self.classes is not None else None
        if len(labels) and (labels.min() < 0 or (n_classes is not None and labels.max() >= n_classes)):
            allowed = f"0 to {n_classes - 1}" if n_classes is not None else "non-negative labels"
            raise DataError(
                f"{title} file {lbl_path} holds labels from {labels.min()} to {labels.max()}, expected "
                f"{allowed}; {fix}."
            )
        return images, labels

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
        """``(image uint8 (1, H, W), label)``."""
        return self.images[index].unsqueeze(0), int(self.labels[index])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, n={len(self)}, root='{self.root}')"


class MNIST(IDXClassification):
    """MNIST handwritten digits: 60000 train / 10000 test 28x28 grayscale images, 10 classes."""

    name = "mnist"
    display_name = "MNIST"
    description = "MNIST handwritten digits: 60000 train / 10000 test grayscale 28x28 images, 10 classes."
    files = MNIST_FILES
    sha256 = {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    }
    mirrors = [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ]
    classes = [str(i) for i in range(10)]
    image_size = (28, 28)


class IDXFolder(IDXClassification):
    """Your own data in MNIST's file layout under ``root`` (required); no checksums.

    ``classes`` are ``["0", ..., str(max label)]`` over all splits present in ``root``;
    ``image_size`` is taken from the files.
    """

    name = "idx"
    display_name = "IDX"
    description = "Your own uint8 images and labels in MNIST's IDX file layout (needs data.root; no checksums)."
    files = MNIST_FILES
    sha256 = {}
    mirrors = []
    classes = None
    image_size = None

    def __init__(self, root: Optional[os.PathLike] = None, split: str = "train", download: bool = False):
        if root is None:
            raise DataError(
                "The idx dataset needs root=/path/to/folder (CLI: --set data.root=...) holding "
                "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz] and the t10k-* test files."
            )
        super().__init__(root, split, download=False)
        top = int(self.labels.max()) if len(self.labels) else -1
        # Other splits count too, so train and test agree on the number of classes.
        for other, (_, lbl_name) in self.files.items():
            if other != split and self.find_file(self.root, lbl_name) is not None:
                labels = self._read(self.root, lbl_name)
                if labels.size:
                    top = max(top, int(labels.max()))
        self.classes = [str(i) for i in range(top + 1)]
        self.image_size = tuple(self.images.shape[1:])

    @classmethod
    def search_dirs(cls, root: Optional[os.PathLike] = None) -> List[Path]:
        """Only ``root`` itself (nothing without a root)."""
        return [] if root is None else [Path(root).expanduser()]
