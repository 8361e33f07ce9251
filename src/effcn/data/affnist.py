"""affNIST (Tieleman 2013): the real .mat files, an affNIST-style generator, and MNIST-40.

- :class:`AffNIST` (``affnist``) reads the real files: MATLAB v5 ``.mat`` files holding a struct
  ``affNISTdata`` whose field ``image`` is 1600 x N uint8 (one 40x40 image per column, stored
  row-major: ``image[:, n].reshape(40, 40)`` is upright, as every published loader does it) and
  ``label_int`` 1 x N. Splits: ``test`` (``test.mat``, 320,000 images: 32 affine versions of the
  10,000 MNIST test digits) and ``train`` (``training_and_validation_batches/1.mat`` ... ``32.mat``,
  60,000 images each). Reading needs scipy (``pip install 'effcn[scipy]'``).
- :class:`AffNISTStyle` (``affnist_style``) is *not* affNIST: the MNIST test digits under random
  affine transforms made here (the paper's: rotation +-20 deg, shear +-40 deg, scale 0.8-1.2, random
  whole-digit placement in 40x40), seeded and cached as an .npz. Use it when the real set is
  absent, and always report it under its own name.
- :class:`MNIST40` (``mnist40``) is the affNIST protocol's training data: MNIST digits on a 40x40
  canvas at a random position (fixed seed per split, so validation and test are fixed); the
  ``place`` augmentation re-places the training digits every batch.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from effcn.data.base import cache_dir, dedupe_dirs
from effcn.data.download import download_url
from effcn.data.geometry import margins, pad_to, place_randomly, translate, warp_affine
from effcn.data.mnist import MNIST
from effcn.errors import DataError
from effcn.io import writing_error

AFFNIST_SIZE = 40
AFFNIST_BASE_URL = "https://www.cs.toronto.edu/~tijmen/affNIST/32x/transformed/"
# No checksums of these archives are published (the affNIST page lists none); downloads and files
# are verified by structure instead: the zip must hold the expected .mat files, and each .mat must
# hold an affNISTdata struct with a 1600 x N uint8 image field and N labels in 0..9.
AFFNIST_ARCHIVES = {"test": "test.mat.zip", "train": "training_and_validation_batches.zip"}
AFFNIST_TRAIN_BATCHES = 32


def _scipy_io():
    try:
        import scipy.io
    except ImportError:
        raise DataError("Reading affNIST .mat files needs scipy; install it with "
                        "pip install 'effcn[scipy]'.") from None
    return scipy.io


def read_affnist_mat(path: os.PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """One affNIST .mat file -> images uint8 (N, 40, 40), labels int64 (N,)."""
    sio = _scipy_io()
    path = Path(path)
    fix = "delete it and download it again (CLI: --set data.download=true)"
    try:
        mat = sio.loadmat(str(path), squeeze_me=False, struct_as_record=True)
    except Exception as e:  # scipy raises ValueError, MatReadError, OSError, ... on bad files
        raise DataError(f"affNIST file {path} is not a readable MATLAB file ({e}); {fix}.") from None
    data = mat.get("affNISTdata")
    names = getattr(getattr(data, "dtype", None), "names", None) or ()
    if data is None or "image" not in names or "label_int" not in names:
        raise DataError(f"affNIST file {path} has no affNISTdata struct with image and label_int "
                        f"fields (found variables {sorted(k for k in mat if not k.startswith('__'))}); {fix}.")
    record = data.reshape(-1)[0]
    image, label = np.asarray(record["image"]), np.asarray(record["label_int"]).reshape(-1)
    if image.ndim != 2 or image.shape[0] != AFFNIST_SIZE * AFFNIST_SIZE or image.dtype != np.uint8:
        raise DataError(f"affNIST file {path} holds {image.dtype} images of shape {image.shape}, "
                        f"expected uint8 of shape (1600, N); {fix}.")
    if len(label) != image.shape[1] or (len(label) and (label.min() < 0 or label.max() > 9)):
        raise DataError(f"affNIST file {path} holds {len(label)} labels for {image.shape[1]} images "
                        f"(expected one digit 0-9 per image); {fix}.")
    # Column n is image n, row-major within the column (transposing gives C-contiguous rows).
    images = np.ascontiguousarray(image.T).reshape(-1, AFFNIST_SIZE, AFFNIST_SIZE)
    return images, label.astype(np.int64)


def _extract_zip(archive: Path, folder: Path, wanted: List[str]) -> None:
    """Extract the members named in ``wanted`` (paths inside the zip, matched by their tail)
    from ``archive`` into ``folder``, each via a temporary file and a rename."""
    with zipfile.ZipFile(archive) as zf:
        by_tail = {}
        for name in zf.namelist():
            parts = Path(name).parts
            for w in wanted:
                if not name.endswith("/") and tuple(parts[-len(Path(w).parts):]) == Path(w).parts:
                    by_tail[w] = name
        missing = [w for w in wanted if w not in by_tail]
        if missing:
            raise DataError(f"archive {archive} lacks {', '.join(missing)}; delete it and download "
                            f"it again.")
        for w, name in by_tail.items():
            dest = folder / w
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f"{dest.name}.part-{os.getpid()}")
            try:
                with zf.open(name) as src, open(tmp, "wb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                os.replace(tmp, dest)
            except OSError as e:
                raise writing_error(e, dest) from None
            finally:
                if tmp.exists():
                    tmp.unlink()


class AffNIST(torch.utils.data.Dataset):
    """The real affNIST (40x40, 10 classes) from its .mat files; see the module docstring.

    ``images`` uint8 (N, 40, 40), ``labels`` int64 (N,). Items ``(image (1, 40, 40), label)``.
    """

    name = "affnist"
    description = ("affNIST (real): MNIST digits under random affine transforms, 40x40; test.mat "
                   "(320,000) and 32 training batches (needs scipy).")
    splits = ("test", "train")
    classes = [str(i) for i in range(10)]
    base_url = AFFNIST_BASE_URL
    # No published checksums exist for the affNIST files (and none could be computed offline):
    # each file's image count is checked instead, so a truncated or other file is caught.
    images_per_file = {"test": 320_000, "train": 60_000}

    def __init__(self, root: Optional[os.PathLike] = None, split: str = "test", download: bool = False):
        if split not in self.splits:
            raise DataError(f"affNIST has no split {split!r}; use 'test' or 'train'.")
        self.split = split
        folder = self.locate(root, split)
        if folder is None:
            if not download:
                raise DataError(
                    f"affNIST {split} files ({', '.join(self.files_of(split)[:2])}...) not found in "
                    f"{', '.join(map(str, self.search_dirs(root)))}; download "
                    f"{self.base_url}{AFFNIST_ARCHIVES[split]} and unzip it into one of them, "
                    f"or pass download=True (CLI: --set data.download=true).")
            folder = self.download(root, split)
        self.root = folder
        parts = []
        want = self.images_per_file.get(split)
        for f in self.files_of(split):
            images, labels = read_affnist_mat(folder / f)
            if want is not None and len(labels) != want:
                raise DataError(f"affNIST file {folder / f} holds {len(labels)} images, but "
                                f"the real {split} file{'s hold' if split == 'train' else ' holds'} "
                                f"{want:,}{' each' if split == 'train' else ''}; it is cut short or "
                                f"another file: delete it and download it again (CLI: --set "
                                f"data.download=true).")
            parts.append((images, labels))
        self.images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        self.labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))

    @staticmethod
    def files_of(split: str) -> List[str]:
        if split == "test":
            return ["test.mat"]
        return [f"training_and_validation_batches/{i}.mat" for i in range(1, AFFNIST_TRAIN_BATCHES + 1)]

    @classmethod
    def search_dirs(cls, root: Optional[os.PathLike] = None) -> List[Path]:
        """root, root/affnist; without a root: $EFFCN_DATA/affnist, $EFFCN_DATA, the cache."""
        if root is not None:
            return dedupe_dirs([Path(root).expanduser(), Path(root).expanduser() / cls.name])
        dirs = []
        env = os.environ.get("EFFCN_DATA")
        if env:
            dirs += [Path(env).expanduser() / cls.name, Path(env).expanduser()]
        return dedupe_dirs(dirs + [cache_dir() / cls.name])

    @classmethod
    def locate(cls, root: Optional[os.PathLike] = None, split: str = "test") -> Optional[Path]:
        for folder in cls.search_dirs(root):
            if all((folder / f).is_file() for f in cls.files_of(split)):
                return folder
        return None

    @classmethod
    def download(cls, root: Optional[os.PathLike] = None, split: str = "test") -> Path:
        """Download the split's zip into ``search_dirs(root)[0]``, check and extract it."""
        folder = cls.search_dirs(root)[0]
        archive = folder / AFFNIST_ARCHIVES[split]
        wanted = cls.files_of(split)

        def check(path: Path) -> None:
            try:
                with zipfile.ZipFile(path) as zf:
                    names = zf.namelist()
            except zipfile.BadZipFile:
                raise DataError("it is not a zip archive") from None
            for w in wanted:
                if not any(n.endswith(w) for n in names):
                    raise DataError(f"the archive lacks {w}")

        if not archive.is_file():
            download_url(cls.base_url + AFFNIST_ARCHIVES[split], archive, timeout=60, check=check)
        _extract_zip(archive, folder, wanted)
        return folder

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index].unsqueeze(0), int(self.labels[index])


# ------------------------------------------------------------------------ affNIST-style
def affine_matrices(n: int, generator: torch.Generator, max_rotation: float = 20.0,
                    max_shear: float = 40.0, scale: Tuple[float, float] = (0.8, 1.2)) -> torch.Tensor:
    """Random forward maps (n, 2, 2) in (x, y) pixel coordinates about the centre:
    ``rotation @ shear @ scale``, angle uniform in +-max_rotation degrees, horizontal shear
    ``tan(uniform(+-max_shear) degrees)``, x and y scales drawn independently in ``scale``."""
    u = torch.rand((n, 4), generator=generator, dtype=torch.float64)
    angle = torch.deg2rad((u[:, 0] * 2 - 1) * max_rotation)
    shear = torch.tan(torch.deg2rad((u[:, 1] * 2 - 1) * max_shear))
    sx = scale[0] + u[:, 2] * (scale[1] - scale[0])
    sy = scale[0] + u[:, 3] * (scale[1] - scale[0])
    cos, sin, one, zero = angle.cos(), angle.sin(), torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    sh = torch.stack([torch.stack([one, shear], -1), torch.stack([zero, one], -1)], -2)
    sc = torch.stack([torch.stack([sx, zero], -1), torch.stack([zero, sy], -1)], -2)
    return rot @ sh @ sc


def _warp(images: torch.Tensor, forward: torch.Tensor) -> torch.Tensor:
    """Apply forward maps (B, 2, 2) about the centre of square (B, 1, S, S) float images."""
    theta = torch.zeros(len(images), 2, 3, dtype=torch.float32)
    theta[:, :, :2] = torch.linalg.inv(forward).float()  # affine_grid maps output -> input
    return warp_affine(images, theta)


WARP_CANVAS = 64  # large enough for any 28x28 digit under the default transforms


def warp_digits(digits: torch.Tensor, generator: torch.Generator, size: int = AFFNIST_SIZE,
                **ranges) -> torch.Tensor:
    """Random affine versions of 28x28 uint8 digits (N, 28, 28), each fitting in ``size`` x ``size``:
    float (N, 1, 64, 64) in [0, 255], integer-valued, content anywhere on the 64x64 canvas.

    A draw of :func:`affine_matrices` (``ranges`` are its keyword arguments) whose result does not
    fit (every pixel that is non-zero after rounding counts) is drawn again, so no digit is ever
    cut; this rejects some of the largest scale/shear combinations.
    """
    x = pad_to(digits.float().div(255).unsqueeze(1), WARP_CANVAS)
    warped = torch.zeros_like(x)
    todo = torch.arange(len(x))
    for _ in range(100):
        w = (_warp(x[todo], affine_matrices(len(todo), generator, **ranges)) * 255).round().clamp(0, 255)
        top, bottom, left, right = margins(w).unbind(1)
        fits = (WARP_CANVAS - top - bottom <= size) & (WARP_CANVAS - left - right <= size)
        warped[todo[fits]] = w[fits]
        todo = todo[~fits]
        if len(todo) == 0:
            return warped
    raise RuntimeError("affNIST-style generator: some digits never fitted the canvas; narrow the ranges")


def crop_and_place(warped: torch.Tensor, generator: torch.Generator, size: int = AFFNIST_SIZE) -> torch.Tensor:
    """(N, 1, S, S) images whose content fits in ``size`` -> (N, 1, size, size), the content moved
    whole (exact integer shifts) to a uniformly random position."""
    top, _, left, _ = margins(warped).unbind(1)
    corner = translate(warped, -torch.stack([top, left], 1))[..., :size, :size]
    return place_randomly(corner, generator)


def make_affnist_style(digits: torch.Tensor, seed: int = 0, size: int = AFFNIST_SIZE,
                       chunk: int = 2000, **ranges) -> torch.Tensor:
    """affNIST-style images from 28x28 digits: uint8 (N, 28, 28) -> uint8 (N, size, size).

    :func:`warp_digits` then :func:`crop_and_place`, in chunks; deterministic in ``seed`` (a CPU
    generator). ``ranges``: keyword arguments of :func:`affine_matrices`.
    """
    g = torch.Generator().manual_seed(seed)
    out = [crop_and_place(warp_digits(part, g, size, **ranges), g, size).squeeze(1).to(torch.uint8)
           for part in digits.split(chunk)]
    return torch.cat(out) if out else torch.zeros(0, size, size, dtype=torch.uint8)


class AffNISTStyle(torch.utils.data.Dataset):
    """affNIST-*style* test set (not the real affNIST): the 10,000 MNIST test digits, each under one
    random affine transform (see :func:`make_affnist_style`), generated once with a fixed seed and
    cached as ``<cache>/affnist_style/affnist_style-seed<seed>.npz`` (written atomically)."""

    name = "affnist_style"
    description = ("affNIST-style (generated here, NOT the real affNIST): MNIST test digits, random "
                   "rotation +-20, shear +-40, scale 0.8-1.2, placed in 40x40; seeded, cached.")
    splits = ("test",)
    classes = [str(i) for i in range(10)]
    seed = 0
    version = 1  # bump when the generator changes, so stale caches are not reused

    def __init__(self, root: Optional[os.PathLike] = None, split: str = "test", download: bool = False,
                 cache: Optional[os.PathLike] = None):
        if split not in self.splits:
            raise DataError(f"affnist_style has only a 'test' split (got {split!r}); it is built "
                            f"from the MNIST test digits.")
        self.split = split
        mnist = MNIST(root, "test", download=download)
        self.root = mnist.root
        digest = hashlib.sha256(mnist.images.numpy().tobytes()).hexdigest()[:16]
        path = Path(cache) if cache else cache_dir() / self.name / f"{self.name}-v{self.version}-seed{self.seed}.npz"
        images = self._read_cache(path, digest, len(mnist.labels))
        if images is None:
            images = make_affnist_style(mnist.images, seed=self.seed).numpy()
            self._write_cache(path, images, digest)
        self.images = torch.from_numpy(images)
        self.labels = mnist.labels.clone()
        self.cache_path = path

    @staticmethod
    def _read_cache(path: Path, digest: str, n: int) -> Optional[np.ndarray]:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["source"]) != digest or z["images"].shape != (n, AFFNIST_SIZE, AFFNIST_SIZE):
                    return None  # made from other MNIST files: regenerate
                return z["images"]
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            return None  # unreadable cache: regenerate

    @staticmethod
    def _write_cache(path: Path, images: np.ndarray, digest: str) -> None:
        from effcn.io import atomic_write_bytes
        buf = io.BytesIO()
        np.savez_compressed(buf, images=images, source=np.array(digest))
        try:
            atomic_write_bytes(path, buf.getvalue())
        except OSError:
            pass  # a read-only cache only costs regenerating next time

    @classmethod
    def search_dirs(cls, root: Optional[os.PathLike] = None) -> List[Path]:
        return MNIST.search_dirs(root)

    @classmethod
    def locate(cls, root: Optional[os.PathLike] = None, split: str = "test") -> Optional[Path]:
        return MNIST.locate(root, "test") if split in cls.splits else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index].unsqueeze(0), int(self.labels[index])


# ----------------------------------------------------------------------------- MNIST-40
class MNIST40(MNIST):
    """MNIST digits on a 40x40 canvas at a random whole-digit position (the affNIST protocol's
    training and MNIST-40 test data). Positions are fixed per split (seeds below), so the validation
    and test images never change; train with ``data.augment=place`` to re-place every batch."""

    display_name = "MNIST-40"
    description = ("MNIST-40: MNIST digits at a random position on a 40x40 canvas (fixed per split; "
                   "augment 'place' re-places them per batch).")
    placement_seeds = {"train": 40_001, "test": 40_002}

    def __init__(self, root: Optional[os.PathLike] = None, split: str = "train", download: bool = False):
        super().__init__(root, split, download)
        g = torch.Generator().manual_seed(self.placement_seeds[split])
        placed = [place_randomly(pad_to(chunk.unsqueeze(1), AFFNIST_SIZE), g).squeeze(1)
                  for chunk in self.images.split(5000)]
        self.images = torch.cat(placed)
