"""Reading and writing IDX files (the MNIST file format), gzip'd or plain.

Layout: two zero bytes, a type code, the number of dimensions ``ndim``, then ``ndim``
big-endian uint32 sizes, then the values in C order, big-endian.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import Union

import numpy as np

from effcn.errors import DataError, filesystem_error
from effcn.io import writing_error

PathLike = Union[str, "os.PathLike[str]"]

GZIP_MAGIC = b"\x1f\x8b"

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


def read_idx_bytes(path: PathLike, *, what: str = "IDX file", fix: str = DEFAULT_FIX) -> bytes:
    """Return the content of ``path``, decompressed if it starts with the gzip magic bytes.

    ``what`` and ``fix`` shape error messages, e.g. ``what="MNIST file"``.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist; check the path or {fix}.") from None
    except OSError as e:
        raise DataError(f"{what} {path} cannot be read ({e.strerror or e}); check its permissions or {fix}.") from None
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise DataError(
            f"{what} {path} is truncated: its gzip stream ends early ({len(raw)} bytes on disk); {fix}."
        ) from None
    except (OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{what} {path} is not a valid gzip file ({e}); {fix}.") from None


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
