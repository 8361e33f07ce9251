"""Builders shared by the tests: synthetic data files in the real formats, quick configs.

Test files import from here (never from each other or from conftest); conftest.py holds only
fixtures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from effcn.data.idx import write_idx

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


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
    """Write train/test IDX files (gzip'd) with MNIST's file names into root."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed, prefix in (("train", n_train, 0, "train"), ("test", n_test, 1, "t10k")):
        images, labels = synthetic_digits(n, seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def quick_overrides(root: Path, run_dir: Path, epochs: int = 2, name: str = "quick") -> list[str]:
    """--set overrides for a seconds-long CPU run of the tiny model on the synthetic data."""
    return ["data.dataset=idx", f"data.root={root}", "data.val_size=40",
            "model.name=efficient_capsnet_tiny", f"train.epochs={epochs}", "train.batch_size=32",
            "train.eval_batch_size=64", "train.progress=false", "train.log_every=3",
            "optim.lr=0.003", f"run.dir={run_dir}", f"run.name={name}", "train.device=cpu"]
