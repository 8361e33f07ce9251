"""A plain reference implementation of Efficient-CapsNet training, to measure effcn against.

Written the way the earlier ports were: a torch Dataset whose __getitem__ augments one image at a
time (numpy, scipy.ndimage, PIL's Lanczos resize, as the authors' code did per sample), a
DataLoader that collates the samples, eager fp32, and the model written the obvious way (the
primary capsules as a depthwise convolution, the predictions as a broadcast matmul, the
agreement as the full n_in x n_in matrix of dot products, then summed). Parameter names match
effcn's EfficientCapsNet, so the same weights load into both (throughput_vs_reference.py checks the outputs).

Needs numpy, scipy and pillow (pip install 'effcn[scipy,image]').
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------- augmentation
def augment_one(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The paper's MNIST augmentation of one float image (28, 28) in [0, 1]."""
    from PIL import Image
    from scipy import ndimage

    def frac():
        return min(abs(rng.normal(0, 0.33)), 0.9999)

    size = img.shape[0]
    if rng.random() < 0.5:                                                  # 1. rotate
        angle = int(np.clip(rng.normal(0, 0.33), -0.9999, 0.9999) * 30)
        img = ndimage.rotate(img, angle, reshape=False, order=1, mode="constant")
    rows, cols = np.nonzero(img > 0)                                        # 2. shift
    if len(rows):
        for axis, (lo, hi) in enumerate(((rows.min(), rows.max()), (cols.min(), cols.max()))):
            if rng.random() < 0.5:
                amount = -int(frac() * lo)
            else:
                amount = int(frac() * (size - 1 - hi))
            img = np.roll(img, amount, axis=axis)
            if amount > 0:
                img[(slice(0, amount),) if axis == 0 else (slice(None), slice(0, amount))] = 0
            elif amount < 0:
                img[(slice(amount, None),) if axis == 0 else (slice(None), slice(amount, None))] = 0
    shrink = int(frac() * 7 + 1)                                            # 3. squish
    narrow = np.asarray(Image.fromarray(img.astype(np.float32), mode="F")
                        .resize((size - shrink, size), Image.LANCZOS))
    offset = shrink // 2 + int(frac() * 2)
    out = np.zeros_like(img)
    out[:, offset:offset + size - shrink] = narrow[:, :size - offset]
    img = np.clip(out, 0, 1)
    r, c = rng.integers(4, 23, size=2)                                      # 4. erase
    img[r:r + 4, c:c + 4] = 0
    return img


class PerSampleDataset(torch.utils.data.Dataset):
    """uint8 images (N, 28, 28) served one at a time as float (1, 28, 28), augmented or not."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: bool, seed: int = 0):
        self.images, self.labels, self.augment = images, labels, augment
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        img = self.images[i].astype(np.float32) / 255.0
        if self.augment:
            img = augment_one(img, self.rng)
        return torch.from_numpy(np.ascontiguousarray(img))[None], int(self.labels[i])


# ---------------------------------------------------------------------------------- model
def squash(s, eps=1e-20):
    norm = torch.sqrt((s ** 2).sum(-1, keepdim=True))
    return (1 - 1 / (torch.exp(norm) + eps)) * s / (norm + eps)


class PrimaryCaps(nn.Module):
    def __init__(self, channels, kernel, num_caps, dim):
        super().__init__()
        self.num_caps, self.dim = num_caps, dim
        self.conv = nn.Conv2d(channels, channels, kernel, groups=channels)

    def forward(self, x):
        x = self.conv(x).permute(0, 2, 3, 1)
        return squash(x.reshape(x.shape[0], self.num_caps, self.dim))


class DigitCaps(nn.Module):
    def __init__(self, n_in, d_in, n_out, d_out):
        super().__init__()
        self.d_out = d_out
        self.W = nn.Parameter(torch.randn(n_out, n_in, d_in, d_out) * 0.05)
        self.b = nn.Parameter(torch.zeros(n_out, n_in))

    def forward(self, u):
        # (B, 1, n_in, 1, d_in) @ (n_out, n_in, d_in, d_out) -> (B, n_out, n_in, d_out)
        u_hat = (u[:, None, :, None, :] @ self.W).squeeze(3)
        # every pair of predictions: (B, n_out, n_in, n_in), summed over the second index
        a = (u_hat @ u_hat.transpose(-1, -2)).sum(-1) / math.sqrt(self.d_out)
        c = torch.softmax(a, dim=1)
        return squash(((c + self.b)[..., None] * u_hat).sum(2))


class ReferenceCapsNet(nn.Module):
    """The MNIST Efficient-CapsNet; state_dict keys equal effcn's EfficientCapsNet's."""

    def __init__(self):
        super().__init__()
        layers, ch = [], 1
        for out, k, s in ((32, 5, 1), (64, 3, 1), (64, 3, 1), (128, 3, 2)):
            layers += [nn.Conv2d(ch, out, k, stride=s), nn.ReLU(),
                       nn.BatchNorm2d(out, eps=1e-3, momentum=0.01)]
            ch = out
        self.stem = nn.Sequential(*layers)
        self.primary = PrimaryCaps(128, 9, 16, 8)
        self.digit_caps = DigitCaps(16, 8, 10, 16)
        self.decoder = nn.Module()
        self.decoder.net = nn.Sequential(nn.Linear(160, 512), nn.ReLU(), nn.Linear(512, 1024),
                                         nn.ReLU(), nn.Linear(1024, 784), nn.Sigmoid())

    def forward(self, x, y=None):
        caps = self.digit_caps(self.primary(self.stem(x)))
        lengths = torch.sqrt((caps ** 2).sum(-1))
        keep = y if y is not None else lengths.argmax(1)
        masked = caps * F.one_hot(keep, 10)[..., None].float()
        recon = self.decoder.net(masked.flatten(1)).view(-1, 1, 28, 28)
        return lengths, recon


def reference_loss(lengths, recon, x, y):
    t = F.one_hot(y, 10).float()
    margin = (t * F.relu(0.9 - lengths) ** 2 + 0.5 * (1 - t) * F.relu(lengths - 0.1) ** 2)
    return margin.sum(1).mean() + 0.392 * F.mse_loss(recon, x)


class ReferenceContender:
    """Training steps from a per-sample DataLoader and evaluation, as throughput_vs_reference.py times them."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int,
                 eval_batch_size: int, workers: int = 0):
        torch.manual_seed(0)
        self.model = ReferenceCapsNet()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=5e-4, eps=1e-7)
        loader = torch.utils.data.DataLoader
        self.train_loader = loader(PerSampleDataset(images, labels, augment=True),
                                   batch_size=batch_size, shuffle=True, drop_last=True,
                                   num_workers=workers)
        self.eval_set = PerSampleDataset(images, labels, augment=False)
        self.eval_batch_size, self.workers = eval_batch_size, workers
        self.batches = iter(self.train_loader)

    def _next(self):
        try:
            return next(self.batches)
        except StopIteration:
            self.batches = iter(self.train_loader)
            return next(self.batches)

    def train_step(self):
        self.model.train()
        x, y = self._next()
        lengths, recon = self.model(x, y)
        loss = reference_loss(lengths, recon, x, y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    @torch.no_grad()
    def evaluate(self, n: int) -> float:
        """Accuracy on the first n images."""
        self.model.eval()
        subset = torch.utils.data.Subset(self.eval_set, range(n))
        correct = 0
        for x, y in torch.utils.data.DataLoader(subset, batch_size=self.eval_batch_size,
                                                num_workers=self.workers):
            lengths, _ = self.model(x)
            correct += (lengths.argmax(1) == y).sum().item()
        return correct / n
