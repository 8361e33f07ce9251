"""MNIST numbers: k MNIST digits side by side (28 x 28k), the class the k-digit number.

Image ``i`` of a set is the digits ``table[i, 0], ..., table[i, k-1]`` (indices into a split's
digits) placed left to right on a 28 x 28k canvas, without gaps or overlap; its class is the
number they spell, leading zeros allowed: digits 0, 0, 7 are class 7, named "007". So there are
10**k classes (10, 100, 1,000 for k = 1, 2, 3).

Training images are composed on the device, fresh every batch, from the training digits (the
task draws the index table from the epoch's generator); fixed sets (validation, test) keep an
index table drawn once from a seed (:func:`permutation_table`) and compose images batch by
batch, never storing them. Composition is a gather and a reshape, so it works on uint8 and float
digits alike and never reads a value back to the host.

The registered dataset ``mnist_numbers`` holds the plain MNIST digits (28x28, labels 0-9);
training it goes through :class:`effcn.training.tasks.numbers.NumbersTask`, which
``effcn train`` picks for it.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from effcn.data.mnist import MNIST

MAX_DIGITS = 3


class MNISTNumbers(MNIST):
    """The MNIST digits that MNIST numbers are composed of (items are single 28x28 digits)."""

    display_name = "MNIST numbers (MNIST digits)"
    description = ("MNIST numbers: task.args.digits MNIST digits side by side (28 x 28k), 10**k "
                   "classes; composed on the fly for training, fixed-seed test numbers.")


def number_labels(digit_labels: torch.Tensor) -> torch.Tensor:
    """The numbers that digits spell, most significant first: (B, k) int -> (B,) int64."""
    k = digit_labels.shape[1]
    powers = 10 ** torch.arange(k - 1, -1, -1, device=digit_labels.device)
    return (digit_labels.long() * powers).sum(dim=1)


def number_names(k: int) -> List[str]:
    """Class names of k-digit numbers, zero-padded: ["00", "01", ..., "99"] for k = 2."""
    return [f"{n:0{k}d}" for n in range(10 ** k)]


def side_by_side(digits: torch.Tensor) -> torch.Tensor:
    """(B, k, C, H, W) digits -> (B, C, H, k * W): digit p fills columns p*W to (p+1)*W - 1."""
    b, k, c, h, w = digits.shape
    return digits.permute(0, 2, 3, 1, 4).reshape(b, c, h, k * w)


def compose_numbers(digits: torch.Tensor, labels: torch.Tensor, table: torch.Tensor):
    """The numbers of an index table: ``digits`` (N, C, H, W) of any dtype, ``labels`` (N,),
    ``table`` (B, k) indices into them, on their device. Returns ``(images (B, C, H, k * W) of
    the digits' dtype, number labels (B,) int64)``."""
    b, k = table.shape
    images = side_by_side(digits[table.reshape(-1)].reshape(b, k, *digits.shape[1:]))
    return images, number_labels(labels[table])


def permutation_table(n_digits: int, n_images: int, k: int,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(n_images, k) digit indices: column p is one random permutation of the n_digits digits
    (as many concatenated as needed) cut to n_images, each column drawn on its own. With
    n_images = n_digits every digit appears exactly once at every position."""
    if n_digits < 1:
        raise ValueError("MNIST numbers need at least one digit")
    device = generator.device if generator is not None else "cpu"
    passes = -(-n_images // n_digits)
    columns = [torch.cat([torch.randperm(n_digits, generator=generator, device=device)
                          for _ in range(passes)])[:n_images] for _ in range(k)]
    return torch.stack(columns, dim=1)


def epoch_table(n_digits: int, n_images: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """(n_images, k) training indices of one epoch: shuffled passes over the digits (each pass
    one permutation) read k at a time, so within a pass every digit is used exactly once."""
    passes = -(-n_images * k // n_digits)
    order = torch.cat([torch.randperm(n_digits, generator=generator, device=generator.device)
                       for _ in range(passes)])
    return order[: n_images * k].view(n_images, k)


class NumberSet:
    """A fixed set of ``n_images`` k-digit numbers from ``digits`` (N, 1, 28, 28) uint8 and their
    ``labels`` (N,): the index table of :func:`permutation_table`, drawn once from ``seed`` (on
    the CPU, so the same seed gives the same set on every device and in every process)."""

    def __init__(self, digits: torch.Tensor, labels: torch.Tensor, k: int, n_images: int,
                 seed: int):
        self.digits = digits.unsqueeze(1) if digits.dim() == 3 else digits
        self.labels = labels.long().to(self.digits.device)
        self.k, self.seed = k, seed
        g = torch.Generator().manual_seed(seed)
        self.table = permutation_table(len(labels), n_images, k, g).to(self.digits.device)

    def __len__(self) -> int:
        return len(self.table)

    def batch(self, start: int, stop: int):
        """Numbers ``start:stop``: (images uint8 (B, 1, 28, 28k), labels (B,))."""
        return compose_numbers(self.digits, self.labels, self.table[start:stop])
