"""Make a folder of 64x64 colour photos-like images of 5 classes from Fashion-MNIST.

Each Fashion-MNIST item (28x28 grey) is tinted with a random colour, scaled to a random size
(36 to 60 pixels) and placed at a random position on a 64x64 background of a random colour
gradient with noise. Written as PNG files in the layout ``effcn train --data`` reads:

    OUT/train/<class>/<n>.png   (from Fashion-MNIST's training images)
    OUT/test/<class>/<n>.png    (from its test images: never seen in training)

Usage (Fashion-MNIST is found in the usual places, e.g. /usr/share/datasets/fashion-mnist):

    python examples/make_fashion_folder.py OUT [--train-per-class 1000] [--test-per-class 200]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from effcn.data import FashionMNIST

CLASSES = {0: "tshirt", 1: "trouser", 2: "pullover", 7: "sneaker", 8: "bag"}
SIZE = 64


def photo(item: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 28x28 uint8 item -> a 64x64x3 uint8 image: tinted, scaled, placed on a background."""
    side = int(rng.integers(36, 61))
    alpha = np.asarray(Image.fromarray(item).resize((side, side), Image.LANCZOS),
                       np.float32) / 255.0
    top, left = rng.integers(0, SIZE - side + 1, size=2)
    c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)            # background gradient ends
    ramp = np.linspace(0, 1, SIZE)[:, None, None]
    bg = (c0 * (1 - ramp) + c1 * ramp) * np.ones((SIZE, SIZE, 1))
    bg = np.clip(bg + rng.normal(0, 0.04, bg.shape), 0, 1)
    tint = rng.uniform(0, 1, 3)
    a = np.zeros((SIZE, SIZE, 1), np.float32)
    a[top:top + side, left:left + side, 0] = alpha
    shade = 0.6 + 0.4 * a                                            # keep the item's texture
    out = bg * (1 - a) + (tint * shade) * a
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def write(split: str, per_class: int, out: Path, rng: np.random.Generator) -> int:
    ds = FashionMNIST(split=split)
    images, labels = ds.images.numpy(), ds.labels.numpy()
    n = 0
    for label, name in CLASSES.items():
        folder = out / ("train" if split == "train" else "test") / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, idx in enumerate(np.flatnonzero(labels == label)[:per_class]):
            Image.fromarray(photo(images[idx], rng)).save(folder / f"{i:05d}.png")
            n += 1
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--train-per-class", type=int, default=1000)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    n_train = write("train", a.train_per_class, a.out, rng)
    n_test = write("test", a.test_per_class, a.out, rng)
    print(f"{a.out}: {n_train} training and {n_test} test images of {len(CLASSES)} classes")


if __name__ == "__main__":
    main()
