"""smallNORB (LeCun, Huang, Bottou 2004): 96x96 stereo image pairs of 50 toys in 5 categories.

Files (https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/), per split: ``-dat`` (N, 2, 96, 96)
uint8 stereo pairs (left camera first), ``-cat`` (N,) int32 category, ``-info`` (N, 4) int32
(instance, elevation 0-8, azimuth 0,2,...,34, lighting 0-5); N = 24300 in both splits.

The NORB binary matrix format, all little-endian: int32 magic (the element type: 0x1E3D4C55
uint8, 0x1E3D4C54 int32, 0x1E3D4C51 float32, 0x1E3D4C53 float64, 0x1E3D4C56 int16), int32 ndim,
then max(3, ndim) int32 sizes (only the first ndim count: a 1-D "-cat" file stores 3 sizes, the
last two padding), then the elements in row-major order. Files may be gzip-compressed.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch

from effcn.data.base import LocalDataset
from effcn.errors import DataError

NORB_TYPES = {0x1E3D4C55: np.dtype("u1"), 0x1E3D4C54: np.dtype("<i4"),
              0x1E3D4C51: np.dtype("<f4"), 0x1E3D4C53: np.dtype("<f8"),
              0x1E3D4C56: np.dtype("<i2")}
NORB_MAGIC = {v.str: k for k, v in NORB_TYPES.items()}


def parse_norb(data: bytes, path="<bytes>", what: str = "NORB file",
               fix: str = "replace it with an intact file") -> np.ndarray:
    """Decode a NORB binary matrix (already decompressed) into a native-endian array."""
    if len(data) < 8:
        raise DataError(f"{what} {path} is truncated: {len(data)} bytes, fewer than the 8-byte "
                        f"NORB header; {fix}.")
    magic, ndim = struct.unpack_from("<ii", data, 0)
    if magic not in NORB_TYPES:
        raise DataError(f"{what} {path} is not a NORB matrix (magic number {magic:#x}, expected "
                        f"one of {', '.join(hex(m) for m in NORB_TYPES)}); {fix}.")
    if not 0 <= ndim <= 16:
        raise DataError(f"{what} {path} declares {ndim} dimensions; {fix}.")
    stored = max(3, ndim)
    header = 8 + 4 * stored
    if len(data) < header:
        raise DataError(f"{what} {path} is truncated inside its header; {fix}.")
    shape = struct.unpack_from(f"<{stored}i", data, 8)[:ndim]
    if any(s < 0 for s in shape):
        raise DataError(f"{what} {path} declares a negative size {shape}; {fix}.")
    dtype = NORB_TYPES[magic]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(f"{what} {path} holds {len(data) - header} data bytes but its header "
                        f"{tuple(shape)} needs {expected}; {fix}.")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(
        dtype.newbyteorder("="), copy=True)


def norb_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` (uint8, int16, int32, float32 or float64) as a NORB binary matrix."""
    array = np.asarray(array)
    le = array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype
    if le.str not in NORB_MAGIC:
        raise DataError(f"NORB matrices cannot store {array.dtype} values; use uint8, int16, "
                        f"int32, float32 or float64.")
    sizes = list(array.shape) + [1] * max(0, 3 - array.ndim)
    head = struct.pack(f"<ii{len(sizes)}i", NORB_MAGIC[le.str], array.ndim, *sizes)
    return head + np.ascontiguousarray(array, dtype=le).tobytes()


def write_norb(path, array: np.ndarray) -> Path:
    """Write a NORB binary matrix, gzip'd (deterministically) if ``path`` ends with .gz."""
    import gzip
    from effcn.io import atomic_write_bytes
    path = Path(path)
    data = norb_bytes(array)
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    atomic_write_bytes(path, data)
    return path


_TRAIN = "smallnorb-5x46789x9x18x6x2x96x96-training"
_TEST = "smallnorb-5x01235x9x18x6x2x96x96-testing"


class SmallNORB(LocalDataset):
    """smallNORB: 24300 train / 24300 test stereo pairs, uint8 (N, 2, 96, 96), 5 classes.

    ``images`` (N, 2, 96, 96) uint8, channel 0 the left camera; ``labels`` (N,) int64;
    ``info`` (N, 4) int64 (instance, elevation, azimuth, lighting). Files are searched and
    downloaded as for MNIST (``<file>`` or ``<file>.gz``, see ``search_dirs``).
    """

    name = "smallnorb"
    display_name = "smallNORB"
    description = ("smallNORB: 24300 train / 24300 test 96x96 stereo pairs (2 channels) of toys, "
                   "5 classes.")
    files: Dict[str, Tuple[str, ...]] = {
        "train": (f"{_TRAIN}-dat.mat", f"{_TRAIN}-cat.mat", f"{_TRAIN}-info.mat"),
        "test": (f"{_TEST}-dat.mat", f"{_TEST}-cat.mat", f"{_TEST}-info.mat"),
    }
    # MD5 of the decompressed files, as published with the dataset's torchvision-style loaders
    # (the download page gives no checksums). The .gz MD5s are in ``md5_gz`` for reference.
    md5 = {
        f"{_TRAIN}-dat.mat": "8138a0902307b32dfa0025a36dfa45ec",
        f"{_TRAIN}-cat.mat": "fd5120d3f770ad57ebe620eb61a0b633",
        f"{_TRAIN}-info.mat": "19faee774120001fc7e17980d6960451",
        f"{_TEST}-dat.mat": "e9920b7f7b2869a8f1a12e945b2c166c",
        f"{_TEST}-cat.mat": "fd5120d3f770ad57ebe620eb61a0b633",
        f"{_TEST}-info.mat": "7c5b871cc69dcadec1bf6a18141f5edc",
    }
    md5_gz = {
        f"{_TRAIN}-dat.mat": "66054832f9accfe74a0f4c36a75bc0a2",
        f"{_TRAIN}-cat.mat": "23c8b86101fbf0904a000b43d3ed2fd9",
        f"{_TRAIN}-info.mat": "51dee1210a742582ff607dfd94e332e3",
        f"{_TEST}-dat.mat": "e4ad715691ed5a3a5f138751a4ceb071",
        f"{_TEST}-cat.mat": "5aa791cd7e6016cf957ce9bdb93b8603",
        f"{_TEST}-info.mat": "a9454f3864d7fd4bb3ea7fc3eb84924e",
    }
    mirrors = ["https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/"]
    classes = ["animal", "human", "airplane", "truck", "car"]
    image_size = (96, 96)
    torchvision_dir = "smallnorb"

    @classmethod
    def parse(cls, data: bytes, path, what: str, fix: str) -> np.ndarray:
        return parse_norb(data, path, what=what, fix=fix)

    def _load(self, folder: Path, split: str) -> Tuple[np.ndarray, np.ndarray]:
        """Read and verify the split: images uint8 (N, 2, 96, 96), labels (N,); sets ``info``."""
        dat_name, cat_name, info_name = self.files[split]
        images, labels, info = (self._read(folder, n) for n in (dat_name, cat_name, info_name))
        fix = self._fix()
        where = self.find_file(folder, dat_name)
        h, w = self.image_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (2, h, w):
            raise DataError(f"{self._title()} file {where} holds {images.dtype} values of shape "
                            f"{images.shape}, expected uint8 stereo pairs (N, 2, {h}, {w}); {fix}.")
        if labels.ndim != 1 or labels.dtype.kind != "i" or info.shape != (len(labels), 4):
            raise DataError(f"{self._title()} files in {folder} hold labels of shape "
                            f"{labels.shape} and info of shape {info.shape}, expected (N,) and "
                            f"(N, 4) int32; {fix}.")
        if len(images) != len(labels):
            raise DataError(f"{self._title()} files in {folder} do not match: {len(images)} "
                            f"images but {len(labels)} labels; {fix}.")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise DataError(f"{self._title()} file {self.find_file(folder, cat_name)} holds "
                            f"labels from {labels.min()} to {labels.max()}, expected 0 to "
                            f"{len(self.classes) - 1}; {fix}.")
        self.info = torch.from_numpy(info.astype(np.int64))
        return images, labels
