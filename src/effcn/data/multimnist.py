"""MultiMNIST (Sabour et al. 2017, as in Efficient-CapsNet): two overlapping MNIST digits, 36x36.

As in the paper: each digit is padded by 4 to 36x36 and shifted uniformly within +-6 px on both
axes; two digits of different images are added and clipped to [0, 1]. Training pairs are drawn
on the fly, per batch, on the device (:func:`compose_batch`): as in the authors' code any other
image is a partner (:class:`AnyOtherImage`; about 10% of pairs share a label), or only digits of
another label (:class:`PartnerSampler`, effcn's earlier choice). The test set pairs every test
digit with ``partners`` digits of other labels (default 1000) under a fixed seed, built as the
authors build it or as effcn did (:class:`MultiMNISTPairs`); its images are composed batch by
batch, never stored.

The registered dataset ``multimnist`` holds the plain MNIST digits (28x28); training it goes
through :class:`effcn.training.tasks.multimnist.MultiMNISTTask`, which ``effcn train`` picks for it.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from effcn.data.geometry import pad_to, translate
from effcn.data.mnist import MNIST

SIZE = 36
MAX_SHIFT = 6


class MultiMNIST(MNIST):
    """The MNIST digits that MultiMNIST pairs are made of (items are single 28x28 digits)."""

    display_name = "MultiMNIST (MNIST digits)"
    description = ("MultiMNIST: pairs of overlapping MNIST digits on 36x36, drawn on the fly for "
                   "training; fixed-seed test pairs (task.args.partners per test digit).")


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


class AnyOtherImage:
    """The authors' training partners: any other image, whatever its label (about 10% of pairs
    then share a label, and the target is 2 for that class). ``n`` digits; called with the
    batch's digit indices ``idx`` (B,), returns partner indices (B,), never ``idx`` itself."""

    def __init__(self, n: int):
        if n < 2:
            raise ValueError("MultiMNIST pairs need at least two digits")
        self.n = n

    def __call__(self, idx: torch.Tensor, generator: Optional[torch.Generator] = None):
        offset = torch.randint(1, self.n, idx.shape, generator=generator, device=idx.device)
        return (idx + offset) % self.n


def compose(first: torch.Tensor, second: torch.Tensor, shifts: torch.Tensor):
    """Overlay two batches of 36x36 (centred, padded) float digits (B, 1, 36, 36).

    ``shifts`` (B, 4) int64: (dy, dx) of the first digit, then of the second. Returns the pair
    image clipped to [0, 1] (B, 1, 36, 36) and the two shifted digits (B, 2, 1, 36, 36), the
    targets of the two reconstructions.
    """
    a, b = translate(first, shifts[:, :2]), translate(second, shifts[:, 2:])
    return (a + b).clamp_(0, 1), torch.stack([a, b], dim=1)


def compose_batch(digits: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor,
                  sampler, generator: Optional[torch.Generator] = None):
    """A training batch of fresh pairs: the digits ``idx`` each with a random partner, drawn by
    ``sampler``: a :class:`PartnerSampler` (another label) or :class:`AnyOtherImage` (the
    authors': any other image).

    ``digits`` uint8 (N, 1, 36, 36) padded digits on the device, ``labels`` (N,). Returns
    ``(x (B, 1, 36, 36) float, labels (B, 2) int64, parts (B, 2, 1, 36, 36))``.
    """
    partner = (sampler(idx, generator) if isinstance(sampler, AnyOtherImage)
               else sampler(labels[idx], generator))
    shifts = random_shifts(len(idx), generator, digits.device)
    shifts = torch.cat([shifts, random_shifts(len(idx), generator, digits.device)], dim=1)
    x, parts = compose(digits[idx].float().div_(255), digits[partner].float().div_(255), shifts)
    return x, torch.stack([labels[idx], labels[partner]], dim=1), parts


def _partners_without_replacement(labels: torch.Tensor, n: int, partners: int,
                                  generator: torch.Generator) -> torch.Tensor:
    """(n * partners,) partner indices: for each of the first n digits, ``partners`` distinct
    digits of other classes, uniform among them (the smallest of random keys, class by class)."""
    out = torch.empty(n, partners, dtype=torch.long)
    for c in labels[:n].unique().tolist():
        rows = (labels[:n] == c).nonzero().squeeze(1)
        others = (labels != c).nonzero().squeeze(1)
        if len(others) < partners:
            raise ValueError(f"{partners} partners per digit, but only {len(others)} digits of "
                             f"classes other than {c}")
        for chunk in rows.split(256):  # (256, N) keys at a time: bounded memory
            keys = torch.rand(len(chunk), len(others), generator=generator)
            out[chunk] = others[keys.topk(partners, dim=1, largest=False).indices]
    return out.flatten()


def pad_digits(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) or (N, 1, 28, 28) digits -> (N, 1, 36, 36), padded by 4 on each side."""
    images = images.unsqueeze(1) if images.dim() == 3 else images
    return images if images.shape[-1] == SIZE else pad_to(images, SIZE)


class MultiMNISTPairs:
    """A fixed MultiMNIST set: each of ``digits`` (first ``n_digits`` of them, all when 0) paired
    with ``partners`` other-label digits from the same set, drawn once from ``seed``.

    ``style="authors"`` builds it as the authors' test set does: each base digit keeps ONE
    random shift for all its pairs, and its partners are drawn WITHOUT replacement from the
    digits of the other classes (so partner classes follow the set's class frequencies), each
    partner shifted on its own. ``style="resampled"`` (effcn's earlier set, kept to reproduce
    its figures): every pair draws both shifts anew, partners with replacement, the partner's
    class uniform over the other classes.

    Pair ``k`` = digit ``k // partners`` with its ``k % partners``-th partner. Only the index
    table (first, second, 4 shifts) is stored; images are composed by :meth:`batch`.
    """

    STYLES = ("authors", "resampled")

    def __init__(self, digits: torch.Tensor, labels: torch.Tensor, partners: int = 1000,
                 seed: int = 0, n_digits: int = 0, style: str = "authors"):
        if partners < 1:
            raise ValueError("partners must be >= 1")
        if style not in self.STYLES:
            raise ValueError(f"style must be one of {self.STYLES}, got {style!r}")
        self.digits = pad_digits(digits)
        self.labels = labels.long().to(self.digits.device)
        n = len(labels) if not n_digits else min(n_digits, len(labels))
        self.partners, self.n_digits, self.style = partners, n, style
        g = torch.Generator().manual_seed(seed)
        labels_cpu = self.labels.cpu()
        self.first = torch.arange(n).repeat_interleave(partners)
        if style == "authors":
            self.second = _partners_without_replacement(labels_cpu, n, partners, g)
            base = random_shifts(n, g, "cpu").repeat_interleave(partners, dim=0)
            self.shifts = torch.cat([base, random_shifts(len(self.first), g, "cpu")],
                                    dim=1).to(torch.int8)
        else:
            self.second = PartnerSampler(labels_cpu)(labels_cpu[self.first], g)
            self.shifts = torch.cat([random_shifts(len(self.first), g, "cpu"),
                                     random_shifts(len(self.first), g, "cpu")],
                                    dim=1).to(torch.int8)

    def __len__(self) -> int:
        return len(self.first)

    def batch(self, start: int, stop: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pairs ``start:stop`` on the digits' device: (x, labels (B, 2), parts), as compose_batch."""
        device = self.digits.device
        first, second = self.first[start:stop].to(device), self.second[start:stop].to(device)
        x, parts = compose(self.digits[first].float().div_(255), self.digits[second].float().div_(255),
                           self.shifts[start:stop].long().to(device))
        return x, torch.stack([self.labels[first], self.labels[second]], dim=1), parts
