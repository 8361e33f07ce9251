"""Builders shared by the tests: synthetic data files in the real formats, quick configs, and
running the effcn command.

Test files import from here (never from each other or from conftest); conftest.py holds only
fixtures. Every writer of a data file in a real format (IDX, smallNORB, CIFAR-10, affNIST .mat,
Keras .h5) lives here; a builder that only one test file uses (in-memory images, a file damaged
for that file's cases) may stay in that file.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from effcn.data.idx import idx_bytes, write_idx

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


# ------------------------------------------------------------------------- MNIST's IDX files
def synthetic_digits(n: int, seed: int, num_classes: int = 10, size: int = 28):
    """Learnable fake digits: class k is a bright bar at a class-dependent place, plus noise.

    Returns uint8 images (n, size, size) and uint8 labels (n,).
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n).astype(np.uint8)
    images = (rng.random((n, size, size)) * 40).astype(np.uint8)
    for i, k in enumerate(labels):
        r = 6 + 2 * (k % 5) + rng.integers(-1, 2)
        c0 = 6 + rng.integers(-1, 2)
        if k < 5:
            images[i, r:r + 2, c0:c0 + 16] = 255
        else:
            images[i, c0:c0 + 16, r:r + 2] = 255
    return images, labels


def write_synthetic_idx(root: Path, n_train: int = 240, n_test: int = 80) -> Path:
    """Write train/test IDX files (gzip'd) of learnable synthetic digits with MNIST's file names
    into root; returns root."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed, prefix in (("train", n_train, 0, "train"), ("test", n_test, 1, "t10k")):
        images, labels = synthetic_digits(n, seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def tiny_split(n: int, seed: int, size=(28, 28), n_classes=10):
    """Random uint8 images (n, *size) (noise, not learnable) and labels 0, 1, ..., cycling."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *size), dtype=np.uint8)
    labels = (np.arange(n) % n_classes).astype(np.uint8)
    return images, labels


def write_tiny_mnist(folder: Path, gz: bool = True, n_train: int = 20, n_test: int = 10) -> dict:
    """Write tiny MNIST-layout IDX files (``tiny_split`` noise) into ``folder``, gzip'd or not;
    return {file name without .gz: sha256 of its decompressed content}, as ``MNIST.sha256``."""
    from effcn.data import MNIST
    folder.mkdir(parents=True, exist_ok=True)
    shas = {}
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = tiny_split(n, seed)
        for fname, arr in zip(MNIST.files[split], (images, labels)):
            write_idx(folder / (fname + (".gz" if gz else "")), arr)
            shas[fname] = hashlib.sha256(idx_bytes(arr)).hexdigest()
    return shas


# ------------------------------------------------------------------------------ smallNORB
def write_smallnorb(root: Path, n: int = 10, seed: int = 0, gz: bool = True, size: int = 96):
    """Both splits of a tiny smallNORB (n random stereo pairs each) in the real file names and
    NORB binary format; returns {file name: MD5 of its decompressed content}, as
    ``SmallNORB.md5``."""
    from effcn.data import SmallNORB
    from effcn.data.smallnorb import norb_bytes, write_norb
    rng = np.random.default_rng(seed)
    md5 = {}
    for split, files in SmallNORB.files.items():
        labels = rng.integers(0, 5, n).astype(np.int32)
        images = rng.integers(0, 256, (n, 2, size, size)).astype(np.uint8)
        images[:, 1] //= 2  # the two cameras differ
        info = rng.integers(0, 9, (n, 4)).astype(np.int32)
        for name, array in zip(files, (images, labels, info)):
            write_norb(root / (name + (".gz" if gz else "")), array)
            md5[name] = hashlib.md5(norb_bytes(array)).hexdigest()
    return md5


# ------------------------------------------------------------------------------- CIFAR-10
def cifar_batch(n: int, seed: int) -> tuple[bytes, np.ndarray, list]:
    """One CIFAR-10 python batch of n random images: (its pickled bytes, data (n, 3072) uint8,
    labels)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    return pickle.dumps({b"batch_label": b"x", b"labels": labels, b"data": data,
                         b"filenames": [b"f"] * n}, protocol=2), data, labels


def write_cifar_archive(path: Path, n: int = 4, extra_member: tuple | None = None):
    """cifar-10-python.tar.gz's layout at path: the 6 batches (n images each) under
    cifar-10-batches-py/, plus an optional (name, bytes) member. Returns ({batch: MD5},
    {batch: (data, labels)})."""
    from effcn.data import CIFAR10
    md5, arrays = {}, {}
    with tarfile.open(path, "w:gz") as tar:
        for i, name in enumerate(CIFAR10.files["train"] + CIFAR10.files["test"]):
            blob, data, labels = cifar_batch(n, i)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
            md5[name] = hashlib.md5(blob).hexdigest()
            arrays[name] = (data, labels)
        if extra_member:
            info = tarfile.TarInfo(extra_member[0])
            info.size = len(extra_member[1])
            tar.addfile(info, io.BytesIO(extra_member[1]))
    return md5, arrays


# -------------------------------------------------------------------------- affNIST .mat
def write_affnist_mat(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """The real files' layout: struct affNISTdata, image 1600 x N (one row-major image per column).
    Needs scipy (callers skip without it: pytest.importorskip("scipy.io"))."""
    import scipy.io as sio
    n = len(labels)
    one_hot = np.zeros((10, n), np.uint8)
    one_hot[labels, np.arange(n)] = 1
    sio.savemat(str(path), {"affNISTdata": {
        "image": images.reshape(n, -1).T.astype(np.uint8),
        "label_int": labels.reshape(1, n).astype(np.uint8),
        "label_one_of_n": one_hot,
    }})


def asymmetric_images(n: int, seed: int = 0) -> np.ndarray:
    """40x40 uint8 images with a bright pixel near the top-right, so a transpose would show."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 50, (n, 40, 40), dtype=np.uint8)
    images[:, 2, 30] = 255
    return images


# ----------------------------------------------------------------- the authors' Keras .h5
# (layer, weight, shape) of efficient_capsnet_SMALLNORB.h5, in the order of the real file's
# weight_names attributes: the CapsNet group, then the Generator (decoder) group.
SMALLNORB_H5_CAPSNET = [
    ("conv2d_4", "kernel", (7, 7, 2, 32)), ("conv2d_4", "bias", (32,)),
    ("instance_normalization", "gamma", (32,)), ("instance_normalization", "beta", (32,)),
    ("conv2d_5", "kernel", (3, 3, 32, 64)), ("conv2d_5", "bias", (64,)),
    ("instance_normalization_1", "gamma", (64,)), ("instance_normalization_1", "beta", (64,)),
    ("conv2d_6", "kernel", (3, 3, 64, 64)), ("conv2d_6", "bias", (64,)),
    ("instance_normalization_2", "gamma", (64,)), ("instance_normalization_2", "beta", (64,)),
    ("conv2d_7", "kernel", (3, 3, 64, 128)), ("conv2d_7", "bias", (128,)),
    ("instance_normalization_3", "gamma", (128,)), ("instance_normalization_3", "beta", (128,)),
    ("conv2d_8", "kernel", (8, 8, 1, 128)), ("conv2d_8", "bias", (128,)),
    ("digit_caps", "W", (5, 16, 8, 16)), ("digit_caps", "b", (5, 16, 1))]
SMALLNORB_H5_GENERATOR = [
    ("dense", "kernel", (80, 64)), ("dense", "bias", (64,)),
    ("conv2d", "kernel", (3, 3, 1, 64)), ("conv2d", "bias", (64,)),
    ("conv2d_1", "kernel", (3, 3, 64, 128)), ("conv2d_1", "bias", (128,)),
    ("conv2d_2", "kernel", (3, 3, 128, 128)), ("conv2d_2", "bias", (128,)),
    ("conv2d_3", "kernel", (3, 3, 128, 2)), ("conv2d_3", "bias", (2,))]


def write_keras_h5(path: Path, seed: int = 0, capsnet=SMALLNORB_H5_CAPSNET,
                   generator=SMALLNORB_H5_GENERATOR) -> dict:
    """Write a Keras-2.4-style weights file (random values) with the groups, weight_names and
    shapes given (default: the authors' smallNORB file); return {"layer/weight": array}.
    Needs h5py (callers skip without it: pytest.importorskip("h5py"))."""
    import h5py
    rng = np.random.default_rng(seed)
    weights = {}
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.4.0"
        f.attrs["layer_names"] = np.array([b"input_2", b"CapsNet", b"input_3", b"mask",
                                           b"Generator"])
        for group_name, layout in (("CapsNet", capsnet), ("Generator", generator)):
            g = f.create_group(group_name)
            names = []
            for layer, weight, shape in layout:
                fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
                scale = 1.0 if weight in ("gamma",) else (0.1 if len(shape) == 1 else
                                                          np.sqrt(2.0 / fan_in))
                value = rng.normal(0, scale, shape).astype(np.float32)
                if weight == "gamma":
                    value = 1 + 0.1 * value
                g.create_dataset(f"{layer}/{weight}:0", data=value)
                names.append(f"{layer}/{weight}:0".encode())
                weights[f"{layer}/{weight}"] = value
            g.attrs["weight_names"] = np.array(names)
        for empty in ("input_2", "input_3", "mask"):
            f.create_group(empty).attrs["weight_names"] = np.array([], dtype=np.float64)
    return weights


# --------------------------------------------------------------------------- quick runs
FOLDER_SIZES = ((20, 20), (28, 28), (40, 32), (96, 64), (33, 47))  # (width, height)


def class_pattern(label: int, width: int, height: int, rng) -> np.ndarray:
    """A noisy float image (H, W) in [0, 1] of class ``label`` (0-2): a bright bar on the left,
    on the right, or across the middle; the position scales with the size."""
    a = rng.uniform(0.0, 0.25, (height, width))
    if label == 0:
        a[:, : max(1, width // 3)] += 0.7
    elif label == 1:
        a[:, width - max(1, width // 3):] += 0.7
    else:
        a[height // 3: height - height // 3, :] += 0.7
    return np.clip(a, 0.0, 1.0)


def write_image_folder(root: Path, per_class: int = 12, classes=("left", "right", "middle"),
                       seed: int = 0, colour: bool | None = None) -> Path:
    """``root/<class>/<i>.png|.jpg``: sizes 20x20 to 96x64, PNG and JPEG, grey and RGB mixed
    (``colour=None``), or all RGB / all grey (True / False); returns root."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = FOLDER_SIZES[i % len(FOLDER_SIZES)]
            a = (class_pattern(label, w, h, rng) * 255).round().astype(np.uint8)
            rgb = (i % 2 == 1) if colour is None else colour
            img = Image.fromarray(np.stack([a, a // 2, 255 - a], -1) if rgb else a)
            img.save(root / name / (f"{i:03d}.jpg" if i % 3 == 2 else f"{i:03d}.png"),
                     **({"quality": 95} if i % 3 == 2 else {}))
    return root


def folder_overrides(root: Path, run_dir: Path, name: str = "folder", epochs: int = 2,
                     dataset: str = "folder") -> list[str]:
    """A seconds-long run of the tiny model on a folder (or arrays) dataset at 28x28 RGB."""
    return ["data.dataset=" + dataset, f"data.root={root}", "data.val_size=6",
            "data.augment=none", "data.image_size=28", "data.channels=3",
            "model.name=efficient_capsnet_tiny", "model.args.in_channels=3",
            "model.args.num_classes=3", f"train.epochs={epochs}", "train.batch_size=8",
            "train.eval_batch_size=64", "train.progress=false", "train.log_every=3",
            "optim.lr=0.003", f"run.dir={run_dir}", f"run.name={name}", "train.device=cpu"]


def quick_overrides(root: Path, run_dir: Path, epochs: int = 2, name: str = "quick") -> list[str]:
    """--set overrides for a seconds-long CPU run of the tiny model on the synthetic data."""
    return ["data.dataset=idx", f"data.root={root}", "data.val_size=40",
            "model.name=efficient_capsnet_tiny", f"train.epochs={epochs}", "train.batch_size=32",
            "train.eval_batch_size=64", "train.progress=false", "train.log_every=3",
            "optim.lr=0.003", f"run.dir={run_dir}", f"run.name={name}", "train.device=cpu"]


def multimnist_overrides(root: Path, out: Path, name: str, extra=()) -> list[str]:
    """A seconds-long MultiMNIST run of the tiny model (36x36) on the synthetic digits (with
    MultiMNIST.sha256 emptied: the synthetic files are not MNIST's)."""
    base = [o for o in quick_overrides(root, out, epochs=1, name=name)
            if not o.startswith("data.dataset")]
    return base + ["data.dataset=multimnist", "task.name=multimnist", "data.augment=none",
                   "model.args.image_size=36", "model.args.primary_kernel=13",
                   "data.train_subset=64", "train.log_every=1", "task.args.partners=1",
                   "task.args.test_digits=30", *extra]


def numbers_overrides(root: Path, out: Path, k: int = 2, name: str = "numbers",
                      epochs: int = 1) -> list[str]:
    """A seconds-long run of the tiny model on k-digit numbers of the synthetic digits (with
    MNISTNumbers.sha256 emptied)."""
    base = [o for o in quick_overrides(root, out, epochs=epochs, name=name)
            if not o.startswith(("data.dataset", "model.name"))]
    return base + ["data.dataset=mnist_numbers", "task.name=numbers", f"task.args.digits={k}",
                   "data.augment=none",
                   "model.name=efficient_capsnet_tiny", f"model.args.image_width={28 * k}",
                   f"model.args.num_classes={10 ** k}", "model.args.primary_kernel=0"]


SEMI_SUPERVISED = ["task.name=semi_supervised", "task.args.labeled=20",
                   "task.args.unlabeled_recon_weight=1", "task.args.consistency_weight=1"]


def task_overrides(task: str, root: Path, out: Path) -> list[str]:
    """--set overrides of a seconds-long run of each registered task (training/tasks TASKS) on
    the synthetic digits; a KeyError names a task that has none yet (add it here)."""
    return {"classification": lambda: quick_overrides(root, out, epochs=1) + ["data.augment=paper"],
            "semi_supervised": lambda: quick_overrides(root, out, epochs=1)
            + ["data.augment=paper", *SEMI_SUPERVISED],
            "multimnist": lambda: multimnist_overrides(root, out, "mm"),
            "numbers": lambda: numbers_overrides(root, out)}[task]()


def write_untrained_run(run_dir: Path, data_root: Path, model: str, overrides: list[str] = (),
                        seed: int = 0, **model_args) -> Path:
    """A run directory as training leaves it after epoch 1 (config.yaml, checkpoints/best.pt and
    last.pt), holding an untrained ``model`` (a registered name, its config changed by
    ``model_args``) on ``data_root``: for tools that read a finished run, without training."""
    import torch

    from effcn.models import create_model
    from effcn.training.checkpoint import checkpoint_state, save_checkpoint
    from effcn.training.config_io import load_config, save_yaml
    config = load_config(None, quick_overrides(data_root, run_dir.parent, epochs=1,
                                               name=run_dir.name) + list(overrides))
    config.model.name, config.model.args = model, dict(model_args)
    torch.manual_seed(seed)
    net = create_model(model, **model_args)
    state = checkpoint_state(net, config, epoch=1,
                             class_names=[str(i) for i in range(net.config.num_classes)])
    for name in ("best.pt", "last.pt"):
        save_checkpoint(run_dir / "checkpoints" / name, state)
    save_yaml(config.to_dict(), run_dir / "config.yaml")
    return run_dir


class FinishedRun(NamedTuple):
    """A finished training run: its folder, its config, what fit() returned, its data folder."""
    path: Path
    config: object
    summary: dict
    data_root: Path


def snapshot(*dirs: Path) -> dict:
    """{path: sha256} of every file under dirs, to prove nothing was changed."""
    out = {}
    for d in dirs:
        for p in sorted(Path(d).rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ------------------------------------------------------------------------ the effcn command
def set_args(overrides: list[str]) -> list[str]:
    """["a=1", "b=2"] -> ["--set", "a=1", "--set", "b=2"]."""
    return [a for o in overrides for a in ("--set", o)]


def effcn_process(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """Run ``python -m effcn ARGS`` in a fresh interpreter (text stdout and stderr captured)."""
    return subprocess.run([sys.executable, "-m", "effcn", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def effcn_in_process(args: list[str], capsys) -> tuple[int, str, str]:
    """Run ``effcn ARGS`` in this interpreter through effcn.cli.main; (exit code, stdout,
    stderr) as captured by pytest's capsys fixture (earlier output is discarded first)."""
    from effcn.cli import main
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_sentence_error(code: int, stderr: str, message: str) -> None:
    """Exit code 2 and stderr exactly one line, without a traceback, containing message."""
    err = stderr.strip()
    assert code == 2, (code, stderr)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert message in err, err


def remount_readonly(where: Path) -> None:
    """Make a tmpfs from the ``small_tmpfs`` fixture read-only (the files stay readable)."""
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)


# ------------------------------------------------------------------ headless Chromium
CHROMIUM_INSTALL = ("apt-get install chromium chromium-driver (Debian; other systems: Chrome and "
                    "its chromedriver) and pip install selenium")


def chromium_missing() -> str | None:
    """Why headless Chromium cannot run here (the browser, its driver or selenium missing),
    or None when it can."""
    import importlib.util
    import shutil
    if importlib.util.find_spec("selenium") is None:
        return f"selenium is not installed ({CHROMIUM_INSTALL})"
    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")):
        return f"no chromium on PATH ({CHROMIUM_INSTALL})"
    if not shutil.which("chromedriver"):
        return f"no chromedriver on PATH ({CHROMIUM_INSTALL})"
    return None


def start_chromium(width: int = 1400, height: int = 900):
    """A selenium driver of headless Chromium that keeps the console log and the network log."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--hide-scrollbars", f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.binary_location = next(shutil.which(b) for b in ("chromium", "chromium-browser",
                                                             "google-chrome") if shutil.which(b))
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def same_state(a, b) -> bool:
    """Exact equality of nested checkpoint contents (tensors bit for bit: dtype and values)."""
    import torch
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(
            same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    return a == b
