"""IDX files (the MNIST file format), gzip'd or plain, and the datasets stored in them.

Layout: two zero bytes, a type code, the number of dimensions ``ndim``, then ``ndim``
big-endian uint32 sizes, then the values in C order, big-endian.

:class:`IDXClassification` is the IDX family of :class:`effcn.data.base.LocalDataset`: an
images file and a labels file per split (MNIST, Fashion-MNIST, your own IDX folder).
"""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from effcn.data.base import LocalDataset, PathLike, read_bytes
from effcn.errors import DataError, filesystem_error
from effcn.io import writing_error

# IDX type code -> big-endian numpy dtype.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}

DEFAULT_FIX = "replace it with an intact copy"

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""MNIST's file names per split, the default layout of :class:`IDXClassification`."""


def read_idx_bytes(path: PathLike, *, what: str = "IDX file", fix: str = DEFAULT_FIX) -> bytes:
    """Return the content of ``path``, decompressed if it starts with the gzip magic bytes.

    ``what`` and ``fix`` shape error messages, e.g. ``what="MNIST file"``.
    """
    return read_bytes(path, what=what, fix=fix)


def parse_idx(data: bytes, path: PathLike = "<bytes>", *, what: str = "IDX file", fix: str = DEFAULT_FIX) -> np.ndarray:
    """Parse decompressed IDX bytes into a writable native-endian array of the stored shape."""
    if len(data) < 4:
        raise DataError(f"{what} {path} is truncated: it has {len(data)} bytes, fewer than the 4-byte IDX header; {fix}.")
    code, ndim = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or code not in IDX_DTYPES:
        raise DataError(
            f"{what} {path} is not an IDX file: it starts with bytes {data[:4].hex(' ')}, expected "
            f"00 00 <type 08/09/0b/0c/0d/0e> <ndim>; {fix}."
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{what} {path} is truncated: its header needs {header} bytes, found {len(data)}; {fix}."
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        problem = "is truncated" if len(data) < expected else "has trailing bytes"
        dims = "x".join(map(str, shape)) or "scalar"
        raise DataError(
            f"{what} {path} {problem}: expected {expected} bytes after decompression "
            f"({dims} values of {dtype.newbyteorder('=').name}), found {len(data)}; {fix}."
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    # astype copies, so the result is writable and owns its memory (torch.from_numpy-safe).
    return arr.astype(dtype.newbyteorder("="))


def read_idx(path: PathLike, *, what: str = "IDX file", fix: str = DEFAULT_FIX) -> np.ndarray:
    """Read an IDX file (gzip'd or plain, detected by content) into a native-endian array."""
    return parse_idx(read_idx_bytes(path, what=what, fix=fix), path, what=what, fix=fix)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` (uint8, int8, int16, int32, float32 or float64) as uncompressed IDX bytes."""
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        raise DataError(
            f"IDX cannot store dtype {array.dtype}; convert the array to uint8, int8, int16, int32, "
            "float32 or float64 first."
        )
    if array.ndim > 255 or any(d >= 2**32 for d in array.shape):
        raise DataError(f"IDX cannot store an array of shape {array.shape}; it allows at most 255 dimensions below 2**32.")
    code = _CODES[native]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()


def write_idx(path: PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file, gzip'd (deterministically, mtime=0) if ``path`` ends with .gz.

    The write is atomic: a temporary file in the same folder is renamed over ``path``.
    """
    path = Path(path)
    data = idx_bytes(array)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            if path.name.endswith(".gz"):
                with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
                    gz.write(data)
            else:
                f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        if filesystem_error(e) is not None:  # a full disk, read-only folder: that sentence
            raise writing_error(e, path) from None
        raise DataError(f"Cannot write IDX file {path} ({e.strerror or e}); check that its folder exists and is writable.") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


class IDXClassification(LocalDataset):
    """Images and labels in IDX files, MNIST's layout; subclasses set the class attributes.

    ``files``: split -> (images file, labels file), without .gz. ``images``: uint8 tensor
    (N, H, W); ``labels``: int64 tensor (N,). Items are ``(image uint8 (1, H, W), label int)``.
    """

    files: Dict[str, Tuple[str, str]] = MNIST_FILES  # split -> (images file, labels file)
    image_size: Optional[Tuple[int, int]] = (28, 28)  # (H, W); None: taken from the files

    @classmethod
    def parse(cls, data: bytes, path: PathLike, what: str, fix: str) -> np.ndarray:
        return parse_idx(data, path, what=what, fix=fix)

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
