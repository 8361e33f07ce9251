"""CIFAR-10 (Krizhevsky 2009): 50000 train / 10000 test 32x32 colour images, 10 classes.

The official "python version" archive ``cifar-10-python.tar.gz`` (MD5 c58f3010...) unpacks to
``cifar-10-batches-py/`` holding ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` and
``batches.meta``. Each batch is a pickled dict: ``b"data"`` a (10000, 3072) uint8 array, rows
being the red, green then blue 32x32 planes (row-major), and ``b"labels"`` a list of ints.

Batches are unpickled with a restricted unpickler that only builds plain containers and numpy
arrays, after their MD5 (torchvision's values) is checked: reading data never runs code.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from effcn.data.base import LocalDataset, read_bytes
from effcn.data.download import download_first, safe_extract_tar
from effcn.errors import DataError

BATCHES_DIR = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"


class _ArrayUnpickler(pickle.Unpickler):
    """Builds only plain containers and numpy arrays; any other global is refused.

    (``_codecs.encode`` is how Python 3 pickles bytes at protocol 2; the official Python 2
    batches do not need it.)"""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed")


def load_batch(data: bytes, path="<bytes>") -> Tuple[np.ndarray, np.ndarray]:
    """A CIFAR-10 python batch (bytes) -> images uint8 (N, 3, 32, 32), labels int64 (N,)."""
    fix = "delete it and download the archive again"
    try:
        batch = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # pickle raises many types on malformed input
        raise DataError(f"CIFAR-10 file {path} is not a CIFAR-10 python batch "
                        f"({type(e).__name__}: {str(e)[:80]}); {fix}.") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"CIFAR-10 file {path} lacks the b'data' and b'labels' entries of a "
                        f"python batch; {fix}.")
    images, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3072 \
            or labels.shape != (len(images),):
        raise DataError(f"CIFAR-10 file {path} holds data of shape {images.shape} ({images.dtype}) "
                        f"and {labels.shape} labels, expected uint8 (N, 3072) and (N,); {fix}.")
    return images.reshape(-1, 3, 32, 32), labels.astype(np.int64)


class CIFAR10(LocalDataset):
    """CIFAR-10: images uint8 (N, 3, 32, 32), labels int64 (N,).

    Looked for as the batch files themselves or inside ``cifar-10-batches-py/`` of every folder
    of :meth:`LocalDataset.search_dirs`; ``download=True`` fetches and checks the archive,
    then extracts it (refusing members outside the target folder).
    """

    name = "cifar10"
    display_name = "CIFAR-10"
    description = "CIFAR-10: 50000 train / 10000 test 32x32 colour images, 10 classes."
    files: Dict[str, Tuple[str, ...]] = {
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
    }
    md5 = {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    }
    gzip_files = False  # MD5s of the batch files as stored
    mirrors = ["https://www.cs.toronto.edu/~kriz/"]
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]
    image_size = (32, 32)
    torchvision_dir = "cifar10"

    @classmethod
    def search_dirs(cls, root: Optional[os.PathLike] = None) -> List[Path]:
        """Each folder of the MNIST-style search, and its ``cifar-10-batches-py`` subfolder."""
        out: List[Path] = []
        for d in super().search_dirs(root):
            out += [d, d / BATCHES_DIR]
        return out

    @classmethod
    def download(cls, root: Optional[os.PathLike] = None, split: str = "train") -> Path:
        """Fetch the archive into ``search_dirs(root)[0]``, check its MD5, extract it there."""
        folder = cls.search_dirs(root)[0]
        archive = folder / ARCHIVE

        def check(path: Path) -> None:
            h = hashlib.md5()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            if h.hexdigest() != ARCHIVE_MD5:
                raise DataError(f"its MD5 starts with {h.hexdigest()[:12]}, expected "
                                f"{ARCHIVE_MD5[:12]}")

        if not archive.is_file():
            download_first([m + ARCHIVE for m in cls.mirrors], archive, check=check)
        else:
            try:
                check(archive)
            except DataError as e:
                raise DataError(f"CIFAR-10 archive {archive} is corrupt or a different file: "
                                f"{e}; delete it and run again.") from None
        safe_extract_tar(archive, folder)
        return folder / BATCHES_DIR

    @classmethod
    def parse(cls, data: bytes, path, what: str, fix: str) -> Tuple[np.ndarray, np.ndarray]:
        """A python batch -> (images uint8 (N, 3, 32, 32), labels int64 (N,))."""
        return load_batch(data, path)

    def _read(self, folder: Path, fname: str) -> Tuple[np.ndarray, np.ndarray]:
        """One batch file, its MD5 verified BEFORE it is unpickled."""
        path = self.find_file(folder, fname)
        what, fix = f"{self._title()} file", self._fix()
        data = read_bytes(path, what=what, fix=fix, decompress=False)
        self.verify(data, fname, path, what, fix)
        return self.parse(data, path, what, fix)

    def _load(self, folder: Path, split: str) -> Tuple[np.ndarray, np.ndarray]:
        parts = [self._read(folder, f) for f in self.files[split]]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise DataError(f"CIFAR-10 files in {folder} hold labels from {labels.min()} to "
                            f"{labels.max()}, expected 0 to 9; {self._fix()}.")
        return images, labels
