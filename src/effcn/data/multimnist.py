"""MultiMNIST (Sabour et al. 2017, as in Efficient-CapsNet): two overlapping MNIST digits, 36x36.

As in the paper: each digit is padded by 4 to 36x36 and shifted uniformly within +-6 px on both axes; two
digits of different images *and different labels* are added and clipped to [0, 1]. Training pairs
are drawn on the fly, per batch, on the device (:func:`compose_batch`); the test set pairs every
test digit with ``partners`` digits of another label (default 1000) under a fixed seed
(:class:`MultiMNISTPairs`), and its images are composed batch by batch, never stored.

The registered dataset ``multimnist`` holds the plain MNIST digits (28x28); training it goes
through :class:`effcn.training.tasks.multimnist.MultiMNISTTask`, which ``effcn train`` picks for it.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from effcn.data.augment import translate
from effcn.data.canvas import pad_to
from effcn.data.mnist import MNIST

SIZE = 36
MAX_SHIFT = 6


class MultiMNIST(MNIST):
    """The MNIST digits that MultiMNIST pairs are made of (items are single 28x28 digits)."""

    display_name = "MultiMNIST (MNIST digits)"
    description = ("MultiMNIST: pairs of overlapping MNIST digits on 36x36, drawn on the fly for "
                   "training; fixed-seed test pairs (data.multimnist_partners per test digit).")


def random_shifts(n: int, generator: Optional[torch.Generator], device) -> torch.Tensor:
    """(n, 2) int64 shifts (dy, dx), each uniform in [-MAX_SHIFT, MAX_SHIFT]."""
    return torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (n, 2), generator=generator, device=device)


class PartnerSampler:
    """Draws, for each digit, a partner index with a different label, without host syncs.

    The partner's label is uniform over the other classes, then the partner is uniform within
    that class (MNIST's classes are nearly balanced, so this is close to uniform over all
    other-label digits). ``labels`` (N,) int64 on the device where draws are made.
    """

    def __init__(self, labels: torch.Tensor, num_classes: int = 10):
        self.num_classes = num_classes
        self.order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels, minlength=num_classes)
        if bool((counts == 0).any()):
            raise ValueError("every class needs at least one digit to draw MultiMNIST partners")
        self.counts = counts
        self.starts = torch.cumsum(counts, 0) - counts

    def __call__(self, labels: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        device = self.order.device
        n = len(labels)
        offset = torch.randint(1, self.num_classes, (n,), generator=generator, device=device)
        partner_label = (labels.to(device) + offset) % self.num_classes
        u = torch.rand(n, generator=generator, device=device)
        within = torch.floor(u * self.counts[partner_label]).long().clamp(max=self.counts[partner_label] - 1)
        return self.order[self.starts[partner_label] + within]


def compose(first: torch.Tensor, second: torch.Tensor, shifts: torch.Tensor):
    """Overlay two batches of 36x36 (centred, padded) float digits (B, 1, 36, 36).

    ``shifts`` (B, 4) int64: (dy, dx) of the first digit, then of the second. Returns the pair
    image clipped to [0, 1] (B, 1, 36, 36) and the two shifted digits (B, 2, 1, 36, 36), the
    targets of the two reconstructions.
    """
    a, b = translate(first, shifts[:, :2]), translate(second, shifts[:, 2:])
    return (a + b).clamp_(0, 1), torch.stack([a, b], dim=1)


def compose_batch(digits: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor,
                  sampler: PartnerSampler, generator: Optional[torch.Generator] = None):
    """A training batch of fresh pairs: the digits ``idx`` each with a random other-label partner.

    ``digits`` uint8 (N, 1, 36, 36) padded digits on the device, ``labels`` (N,). Returns
    ``(x (B, 1, 36, 36) float, labels (B, 2) int64, parts (B, 2, 1, 36, 36))``.
    """
    partner = sampler(labels[idx], generator)
    shifts = random_shifts(len(idx), generator, digits.device)
    shifts = torch.cat([shifts, random_shifts(len(idx), generator, digits.device)], dim=1)
    x, parts = compose(digits[idx].float().div_(255), digits[partner].float().div_(255), shifts)
    return x, torch.stack([labels[idx], labels[partner]], dim=1), parts


def pad_digits(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) or (N, 1, 28, 28) digits -> (N, 1, 36, 36), padded by 4 on each side."""
    images = images.unsqueeze(1) if images.dim() == 3 else images
    return images if images.shape[-1] == SIZE else pad_to(images, SIZE)


class MultiMNISTPairs:
    """A fixed MultiMNIST set: each of ``digits`` (first ``n_digits`` of them, all when 0) paired
    with ``partners`` other-label digits from the same set, shifts drawn once from ``seed``.

    Pair ``k`` = digit ``k // partners`` with its ``k % partners``-th partner. Only the index
    table (first, second, 4 shifts) is stored; images are composed by :meth:`batch`.
    """

    def __init__(self, digits: torch.Tensor, labels: torch.Tensor, partners: int = 1000,
                 seed: int = 0, n_digits: int = 0):
        if partners < 1:
            raise ValueError("partners must be >= 1")
        self.digits = pad_digits(digits)
        self.labels = labels.long().to(self.digits.device)
        n = len(labels) if not n_digits else min(n_digits, len(labels))
        self.partners, self.n_digits = partners, n
        g = torch.Generator().manual_seed(seed)
        sampler = PartnerSampler(self.labels.cpu())
        self.first = torch.arange(n).repeat_interleave(partners)
        self.second = sampler(self.labels.cpu()[self.first], g)
        self.shifts = torch.cat([random_shifts(len(self.first), g, "cpu"),
                                 random_shifts(len(self.first), g, "cpu")], dim=1).to(torch.int8)

    def __len__(self) -> int:
        return len(self.first)

    def batch(self, start: int, stop: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pairs ``start:stop`` on the digits' device: (x, labels (B, 2), parts), as compose_batch."""
        device = self.digits.device
        first, second = self.first[start:stop].to(device), self.second[start:stop].to(device)
        x, parts = compose(self.digits[first].float().div_(255), self.digits[second].float().div_(255),
                           self.shifts[start:stop].long().to(device))
        return x, torch.stack([self.labels[first], self.labels[second]], dim=1), parts
