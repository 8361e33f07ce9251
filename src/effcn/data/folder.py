"""Your own images: a folder of class sub-folders (``folder``) or an array file (``arrays``).

``folder`` reads the layout of torchvision's ImageFolder: ``root/<class>/<image file>``, or the
same under ``root/train``, ``root/val`` and ``root/test`` (train required; each optional other).
``arrays`` reads a ``.npz`` file (or a folder of ``.npy`` files with the same names): images
N x H x W [x C] (uint8, or float in [0, 1] or [0, 255]) and labels N, as ``images``/``labels``
or ``x_train``/``y_train`` (+ ``x_val``/``y_val``, ``x_test``/``y_test``); an optional
``classes`` array of strings names the classes. Loaded with ``allow_pickle=False`` only.

Every image is made ``channels`` x ``image_size`` x ``image_size`` uint8 ONCE, at load:
``fit="resize"`` stretches it (Lanczos, as ``effcn predict --preprocess resize`` does),
``fit="pad"`` keeps its aspect ratio (longer side = image_size) and pads with black. Colour
becomes grey by luma, grey becomes colour by repetition. Without a test split, a seeded,
class-stratified ``test_fraction`` of the images is held out as the test split, and the
dataset says so in ``notes``; a val split (``root/val``, ``x_val``) replaces the validation
images that training otherwise carves out of train (``has_val_split``).

Image files are checked before decoding (:func:`effcn.data.image_files.open_image`: pixel
limit, truncated or corrupt files, animations, float formats). A bad file stops loading with
one sentence naming it, or with ``skip_bad_files`` is skipped and listed in ``skipped`` (and
``notes``). The decoded splits of the last source read are kept in memory (until a file under
it changes), so the test split read at the end of training costs nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from effcn.data.image_files import MAX_PIXELS, image_array, pillow
from effcn.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm", ".pbm")
SPLIT_FOLDERS = ("train", "val", "test")
FITS = ("resize", "pad")
ARRAY_KEYS = {"train": ("x_train", "y_train"), "val": ("x_val", "y_val"),
              "test": ("x_test", "y_test"), "all": ("images", "labels")}


@dataclass(frozen=True)
class ImageOptions:
    """How images become the model's input, and how splits are made.

    ``image_size``: side of the square output (None: the first image's longer side);
    ``channels``: 1 or 3 (0: 1 when the images are grey, else 3)."""
    image_size: Optional[int] = None
    channels: int = 0
    fit: str = "resize"
    skip_bad_files: bool = False
    max_pixels: int = MAX_PIXELS
    test_fraction: float = 0.1
    split_seed: int = 0


@dataclass
class _Loaded:
    """Every split of one source, made uint8 (N, C, S, S)."""
    splits: Dict[str, Tuple[np.ndarray, np.ndarray]]
    classes: List[str]
    notes: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)


_CACHE: Dict[tuple, _Loaded] = {}  # at most one entry: the last source read


def fit_image(a: np.ndarray, size: int, fit: str) -> np.ndarray:
    """uint8 (H, W) or (H, W, C) -> uint8 (size, size[, C]): stretched or aspect-kept + padded."""
    from effcn.data.user_images import resize_float
    h, w = a.shape[:2]
    if (h, w) == (size, size):
        return a
    if fit == "resize":
        th, tw = size, size
    else:
        scale = size / max(h, w)
        th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    out = resize_float(a.astype(np.float32) / 255.0, th, tw)
    out = np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
    if (th, tw) == (size, size):
        return out
    canvas = np.zeros((size, size) + a.shape[2:], np.uint8)
    top, left = (size - th) // 2, (size - tw) // 2
    canvas[top:top + th, left:left + tw] = out
    return canvas


def holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask (N,) of a seeded, class-stratified ``fraction`` of ``labels`` (at least one
    image of each class with two or more; none of a class with one)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = min(len(members) - 1, max(1, round(fraction * len(members))))
        mask[rng.permutation(members)[:n]] = True
    return mask


def _check_options(o: ImageOptions) -> None:
    if o.fit not in FITS:
        raise DataError(f"data.fit={o.fit!r} is not one of {', '.join(FITS)}.")
    if o.channels not in (0, 1, 3):
        raise DataError(f"data.channels={o.channels} must be 1, 3 or 0 (from the images).")
    if not 0.0 < o.test_fraction < 1.0:
        raise DataError(f"data.test_fraction={o.test_fraction} must be between 0 and 1.")


class _OwnImages(Dataset):
    """The common part of ``folder`` and ``arrays``: options, caching, the split asked for."""

    name = ""
    splits = ("train", "test")
    takes_image_options = True
    classes: List[str] = []

    def __init__(self, root: Optional[os.PathLike] = None, split: str = "train",
                 download: bool = False, options: Optional[ImageOptions] = None):
        if root is None:
            raise DataError(f"the {self.name} dataset needs data.root=PATH (CLI: --set "
                            f"data.root=... or effcn train --data PATH).")
        if split not in SPLIT_FOLDERS:
            raise DataError(f"the {self.name} dataset has no split {split!r}; use train, val or "
                            f"test.")
        options = options or ImageOptions()
        _check_options(options)
        self.root = Path(root).expanduser()
        key = (type(self).__name__, str(self.root.resolve()), options, _fingerprint(self.root))
        if key not in _CACHE:
            _CACHE.clear()
            _CACHE[key] = self._load_all(options)
        loaded = _CACHE[key]
        if split not in loaded.splits:
            raise DataError(f"{self.root} has no {split} split (no {split}/ folder or x_{split} "
                            f"array); training carves validation out of train without one.")
        images, labels = loaded.splits[split]
        self.split = split
        self.images = torch.from_numpy(images)
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.classes = list(loaded.classes)
        self.image_size = tuple(images.shape[2:])
        self.has_val_split = "val" in loaded.splits
        self.notes = list(loaded.notes)
        self.skipped = list(loaded.skipped)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])

    @classmethod
    def search_dirs(cls, root: Optional[os.PathLike] = None) -> List[Path]:
        """Only ``root`` itself (nothing without a root)."""
        return [] if root is None else [Path(root).expanduser()]

    def _load_all(self, options: ImageOptions) -> _Loaded:
        raise NotImplementedError

    @staticmethod
    def _with_test(splits: dict, options: ImageOptions, notes: list, where: str) -> dict:
        """``splits`` with a seeded test split held out of train when it has none."""
        if "test" in splits:
            return splits
        images, labels = splits["train"]
        mask = holdout(labels, options.test_fraction, options.split_seed)
        splits["train"] = images[~mask], labels[~mask]
        splits["test"] = images[mask], labels[mask]
        notes.append(f"{where} has no test split: {int(mask.sum())} images "
                     f"({options.test_fraction:g} of each class, data.split_seed="
                     f"{options.split_seed}) are held out as the test split.")
        return splits


class ImageFolder(_OwnImages):
    """``root/<class>/<image>`` (or under root/train, root/val, root/test): see the module."""

    name = "folder"
    description = ("Your own image files, one sub-folder per class (optional train/ val/ test/ "
                   "sub-folders); any size, grey or colour (needs data.root).")

    @classmethod
    def locate(cls, root: Optional[os.PathLike] = None, split: str = "train") -> Optional[Path]:
        """``root`` when it is a folder; its class (or split) folders are checked on load, where
        each fault gets its own sentence."""
        if root is None or not Path(root).expanduser().is_dir():
            return None
        return Path(root).expanduser()

    def _load_all(self, options: ImageOptions) -> _Loaded:
        root = self.root
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist; pass a folder holding one "
                            f"sub-folder of images per class.")
        split_dirs = {s: root / s for s in SPLIT_FOLDERS if (root / s).is_dir()}
        if split_dirs and "train" not in split_dirs:
            raise DataError(f"{root} has {'/, '.join(split_dirs)}/ but no train/ folder; add "
                            f"train/<class>/ folders.")
        split_dirs = split_dirs or {"train": root}
        files = {s: _class_files(d) for s, d in split_dirs.items()}
        classes = sorted({c for per in files.values() for c in per})
        if not classes:
            raise DataError(f"{split_dirs['train']} holds no class sub-folders with image files "
                            f"({', '.join(IMAGE_SUFFIXES)}); put each class's images in a "
                            f"folder named after the class.")
        notes, skipped = [], []
        channels = options.channels or (1 if all(_is_grey(p, options.max_pixels)
                                                  for per in files.values()
                                                  for ps in per.values() for p in ps[:20])
                                        else 3)
        size = options.image_size
        splits = {}
        for split, per_class in files.items():
            arrays, labels = [], []
            for label, name in enumerate(classes):
                for path in per_class.get(name, []):
                    try:
                        a = image_array(path, channels, options.max_pixels)
                    except DataError as e:
                        if not options.skip_bad_files:
                            raise DataError(f"{str(e).rstrip('.')} (or set data.skip_bad_files="
                                            f"true to skip such files).") from None
                        skipped.append(f"{path}: {e}")
                        continue
                    if size is None:
                        size = max(a.shape[:2])
                    arrays.append(fit_image(a, size, options.fit))
                    labels.append(label)
            if not arrays:
                raise DataError(f"the {split} split of {root} has no readable images; add image "
                                f"files to its class folders.")
            splits[split] = (_nchw(np.stack(arrays)), np.asarray(labels, np.int64))
        if skipped:
            notes.append(f"skipped {len(skipped)} unreadable image files (data.skip_bad_files): "
                         + "; ".join(skipped))
        return _Loaded(self._with_test(splits, options, notes, str(root)), classes, notes, skipped)


class ArrayFile(_OwnImages):
    """A ``.npz`` file (or a folder of ``.npy`` files) of images and labels: see the module."""

    name = "arrays"
    description = ("Your own images as a .npz file (or .npy files): images N x H x W [x C], "
                   "labels N; any size, grey or colour (needs data.root).")

    @classmethod
    def locate(cls, root: Optional[os.PathLike] = None, split: str = "train") -> Optional[Path]:
        """``root`` when it is a .npz file or a folder of .npy files."""
        if root is None:
            return None
        r = Path(root).expanduser()
        return r if r.is_file() or (r.is_dir() and any(r.glob("*.npy"))) else None

    def _load_all(self, options: ImageOptions) -> _Loaded:
        arrays = _read_arrays(self.root)
        found = {s: keys for s, keys in ARRAY_KEYS.items() if all(k in arrays for k in keys)}
        if "train" in found:
            found.pop("all", None)
        elif "all" in found:
            found = {"train": found["all"]}
        else:
            raise DataError(f"{self.root} holds arrays {', '.join(sorted(arrays)) or 'none'} but "
                            f"needs images and labels (or x_train and y_train); save them under "
                            f"those names.")
        splits, top = {}, 0
        for split, (xk, yk) in found.items():
            x, y = _images(arrays[xk], self.root, xk), _labels(arrays[yk], self.root, yk)
            if len(x) != len(y):
                raise DataError(f"{self.root}: {xk} holds {len(x)} images but {yk} {len(y)} "
                                f"labels; they must be as many.")
            splits[split] = (x, y)
            top = max(top, int(y.max()) + 1 if len(y) else 0)
        # grey as for image files (and survey): one channel, or three equal ones
        channels = options.channels or (1 if all(x.shape[3] == 1 or _grey(x)
                                                 for x, _ in splits.values()) else 3)
        size = options.image_size or max(splits["train"][0].shape[1:3])
        for split, (x, y) in splits.items():
            splits[split] = (_nchw(np.stack([fit_image(_to_channels(a, channels), size,
                                                       options.fit) for a in x])), y)
        classes = [str(i) for i in range(top)]
        if "classes" in arrays:
            names = arrays["classes"]
            if names.dtype.kind != "U" or names.ndim != 1 or len(names) < top:
                raise DataError(f"{self.root}: classes must be a 1-d array of at least {top} "
                                f"strings (dtype str), one per label.")
            classes = [str(n) for n in names]
        notes: list = []
        return _Loaded(self._with_test(splits, options, notes, str(self.root)), classes, notes)


@dataclass
class Survey:
    """What :func:`survey` found: the dataset name (folder | arrays), class names, whether the
    images are grey, the median of their longer sides, how many images were looked at, and
    how many training images there are (the train split, or everything without one) and
    whether there are val and test splits."""
    dataset: str
    classes: List[str]
    grey: bool
    median_side: int
    sampled: int
    n_train: int
    has_val: bool
    has_test: bool


def survey(root: os.PathLike, max_pixels: int = MAX_PIXELS, sample: int = 200) -> Survey:
    """A look at your own images before training (``effcn train --data``): a folder of class
    folders, a .npz file or a folder of .npy files. Up to ``sample`` image files are decoded
    (evenly spread); unreadable ones are passed over here (loading names them)."""
    r = Path(root).expanduser()
    if not r.exists():
        raise DataError(f"{r} does not exist; pass a folder of class sub-folders or a .npz file.")
    if r.is_file() or (not _class_dirs(r) and any(r.glob("*.npy"))):
        arrays = _read_arrays(r)
        pairs = [(x, y) for x, y in ARRAY_KEYS.values() if x in arrays and y in arrays]
        xs, ys = [_images(arrays[x], r, x) for x, _ in pairs], [arrays[y] for _, y in pairs]
        if not xs:
            raise DataError(f"{r} holds no images/labels or x_train/y_train arrays; save them "
                            f"under those names.")
        top = max((int(np.max(y)) + 1 for y in ys if np.size(y)), default=0)
        if top == 0:
            raise DataError(f"{r} holds no labels (empty label arrays); save one label per "
                            f"image.")
        classes = ([str(n) for n in arrays["classes"]] if "classes" in arrays
                   else [str(i) for i in range(top)])
        grey = all(x.shape[3] == 1 or _grey(x) for x in xs)
        return Survey("arrays", classes, grey, int(max(xs[0].shape[1:3])),
                      sum(len(x) for x in xs), len(xs[0]), "x_val" in arrays, "x_test" in arrays)
    split_dirs = [r / s for s in SPLIT_FOLDERS if (r / s).is_dir()] or [r]
    per_class = [_class_files(d) for d in split_dirs]
    classes = sorted({c for per in per_class for c in per})
    files = [p for per in per_class for ps in per.values() for p in ps]
    if not classes:
        raise DataError(f"{split_dirs[0]} holds no class sub-folders with image files; put each "
                        f"class's images in a folder named after the class.")
    step = max(1, len(files) // sample)
    sides, grey = [], True
    for path in files[::step][:sample]:
        try:
            a = image_array(path, 3, max_pixels)
        except DataError:
            continue
        sides.append(max(a.shape[:2]))
        grey = grey and _grey(a)
    if not sides:
        raise DataError(f"none of the {min(len(files), sample)} image files looked at in {r} "
                        f"could be read; check them with effcn predict or an image viewer.")
    return Survey("folder", classes, grey, int(np.median(sides)), len(sides),
                  sum(len(ps) for ps in per_class[0].values()), (r / "val").is_dir(),
                  (r / "test").is_dir())


def _class_dirs(folder: Path) -> bool:
    """Whether ``folder`` holds class folders of image files (or train/ val/ test/ ones)."""
    return any((folder / s).is_dir() for s in SPLIT_FOLDERS) or bool(_class_files(folder))


def _fingerprint(root: Path) -> tuple:
    """(path, size, mtime) of every file under ``root`` (or of ``root``): a changed, added or
    removed file makes the cached splits stale."""
    paths = sorted(root.rglob("*")) if root.is_dir() else [root]
    return tuple((str(p), st.st_size, st.st_mtime_ns) for p in paths
                 for st in [p.stat()] if p.is_file())


def _class_files(folder: Path) -> Dict[str, List[Path]]:
    """class name -> its image files, sorted (hidden files and other suffixes are ignored)."""
    out = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")
                        and p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            out[d.name] = images
    return out


def _is_grey(path: Path, max_pixels: int) -> bool:
    """Whether an image file is grey (its mode, or RGB with equal channels); unreadable: True
    (its error comes when it is read)."""
    try:
        return _grey(image_array(path, 3, max_pixels))
    except DataError:
        return True


def _grey(a: np.ndarray) -> bool:
    """Whether colour pixels (..., 3) have three equal channels."""
    return bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())


def _nchw(images: np.ndarray) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) -> contiguous (N, C, H, W)."""
    return np.ascontiguousarray(images[:, None] if images.ndim == 3
                                else images.transpose(0, 3, 1, 2))


def _to_channels(a: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (H, W, C) with C 1 or 3 -> (H, W) for 1 channel, (H, W, 3) for 3."""
    if a.shape[2] == channels:
        return a[..., 0] if channels == 1 else a
    if channels == 3:
        return np.repeat(a, 3, axis=2)
    return np.asarray(pillow().fromarray(a).convert("L"))


def _read_arrays(path: Path) -> Dict[str, np.ndarray]:
    """The arrays of a .npz file or of the .npy files of a folder (never unpickled)."""
    try:
        if path.is_dir():
            return {p.stem: np.load(p, allow_pickle=False) for p in sorted(path.glob("*.npy"))}
        if not path.is_file():
            raise DataError(f"array file {path} does not exist; pass a .npz file or a folder of "
                            f".npy files.")
        if path.suffix == ".npy":
            raise DataError(f"{path} is one .npy file; pass the folder holding images.npy and "
                            f"labels.npy (or x_train.npy, y_train.npy ...), or one .npz file.")
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise DataError(f"{path} holds Python objects (pickled arrays), which effcn does not "
                            f"load; save numeric arrays (and classes as a str array).") from None
        raise DataError(f"{path} is not a readable NumPy file ({e}); save it again with "
                        f"numpy.savez.") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path} is not a readable NumPy file ({e}); save it again with "
                        f"numpy.savez.") from None


def _images(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    """Images (N, H, W) or (N, H, W, C) of C 1 or 3 -> uint8 (N, H, W, C)."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[3] not in (1, 3) or min(x.shape[1:3], default=0) < 1:
        raise DataError(f"{path}: {key} has shape {x.shape}, not N x H x W or N x H x W x C "
                        f"with C 1 or 3; save the images channels-last.")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind not in "fiu":
        raise DataError(f"{path}: {key} has dtype {x.dtype}; save uint8 or float images.")
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if not np.isfinite([lo, hi]).all() or lo < 0 or hi > 255:
        raise DataError(f"{path}: {key} holds values from {lo:g} to {hi:g}, outside 0-255; "
                        f"save uint8 images or floats in [0, 1].")
    scale = 255.0 if x.dtype.kind == "f" and hi <= 1.0 else 1.0
    return np.clip(np.round(x.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def _labels(y: np.ndarray, path: Path, key: str) -> np.ndarray:
    y = np.asarray(y).reshape(-1) if np.asarray(y).ndim == 2 and np.asarray(y).shape[1] == 1 else y
    if y.ndim != 1 or y.dtype.kind not in "iu" or (y.size and y.min() < 0):
        raise DataError(f"{path}: {key} must be N non-negative integer labels, got dtype "
                        f"{y.dtype} shape {y.shape}.")
    return y.astype(np.int64)
