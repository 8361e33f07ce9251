"""Reconstructions: a run's 32 fixed images, their reconstruction grid, and the GIF over epochs.

The fixed images are drawn once per run from the validation split (never the test split, which is
read once at the end of training), seeded by the run's seed, sorted by label, and saved in
``RUN/recon/fixed_images.npz`` so every epoch's grid and ``effcn visualize`` show the same images.
Reconstructions decode the longest capsule (what the network predicts), as at inference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import EffcnError
from .probe import forward_batches, require_decoder

N_FIXED = 32
GRID_COLS = 8
PAD = 2
SCALE = 2


def choose_fixed_images(labels: torch.Tensor, seed: int, n: int = N_FIXED) -> torch.Tensor:
    """Positions of n images among ``labels`` (N,), drawn with ``seed``, ordered by label."""
    if len(labels) < n:
        raise EffcnError(f"the validation split has {len(labels)} images, fewer than the {n} "
                         f"fixed reconstruction images; raise data.val_size to at least {n}.")
    pick = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n]
    order = torch.argsort(labels.cpu()[pick] * len(labels) + pick, stable=True)
    return pick[order]


def save_fixed_images(path: str | Path, images: torch.Tensor, labels: torch.Tensor,
                      val_positions: torch.Tensor) -> None:
    """images uint8 (n, C, H, W), labels (n,), their positions in the validation split (n,)."""
    import io
    from ..io import atomic_write_bytes
    buf = io.BytesIO()
    np.savez(buf, images=images.cpu().numpy(), labels=labels.cpu().numpy(),
             val_positions=val_positions.cpu().numpy())
    atomic_write_bytes(path, buf.getvalue())


def load_fixed_images(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (n, C, H, W), labels (n,)) saved by save_fixed_images."""
    path = Path(path)
    if not path.is_file():
        raise EffcnError(f"{path} does not exist: this run saved no fixed reconstruction images; "
                         f"train with --set run.recon_every=1.")
    with np.load(path, allow_pickle=False) as data:
        return torch.from_numpy(data["images"]), torch.from_numpy(data["labels"])


def reconstruct(model, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """images (N, C, H, W) uint8 or float -> reconstructions float (N, C, H, W) in [0, 1]."""
    require_decoder(model)
    return forward_batches(model, images, batch_size)["reconstruction"]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float [0, 1] or uint8 (N, C, H, W) -> uint8 (N, H, W) grey or (N, H, W, 3) colour."""
    if images.dtype != torch.uint8:
        images = (images.float().clamp(0, 1) * 255).round().to(torch.uint8)
    arr = images.cpu().numpy()
    return arr[:, 0] if arr.shape[1] == 1 else arr.transpose(0, 2, 3, 1)


def tile(images: np.ndarray, cols: int, pad: int = PAD, scale: int = SCALE,
         background: int = 64) -> np.ndarray:
    """uint8 (N, H, W[, 3]) -> one image with ``cols`` columns, ``pad`` pixels between cells,
    each cell enlarged ``scale`` times (nearest neighbour)."""
    n, h, w = images.shape[:3]
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
    rows = -(-n // cols)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad) + images.shape[3:], background,
                  dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, cols)
        out[pad + r * (h + pad):pad + r * (h + pad) + h,
            pad + c * (w + pad):pad + c * (w + pad) + w] = images[k]
    return out


def cell(grid: np.ndarray, row: int, col: int, size: int, pad: int = PAD,
         scale: int = SCALE) -> np.ndarray:
    """The (row, col) cell of a ``tile`` output, shrunk back to size x size."""
    s = size * scale
    top, left = pad + row * (s + pad), pad + col * (s + pad)
    return grid[top:top + s:scale, left:left + s:scale]


def pair_grid(originals: torch.Tensor, reconstructions: torch.Tensor,
              cols: int = GRID_COLS) -> np.ndarray:
    """Rows of ``cols`` originals, each followed by the row of their reconstructions.

    Image k is at (row 2 * (k // cols), col k % cols); its reconstruction one row below.
    """
    a, b = to_uint8(originals), to_uint8(reconstructions)
    n = len(a)
    rows = []
    for start in range(0, n, cols):
        chunk_a, chunk_b = a[start:start + cols], b[start:start + cols]
        if len(chunk_a) < cols:  # pad a short last row with black cells
            fill = np.zeros((cols - len(chunk_a),) + a.shape[1:], dtype=np.uint8)
            chunk_a, chunk_b = np.concatenate([chunk_a, fill]), np.concatenate([chunk_b, fill])
        rows += [chunk_a, chunk_b]
    return tile(np.concatenate(rows), cols)


def reconstruction_grid(model, images: torch.Tensor, cols: int = GRID_COLS) -> np.ndarray:
    """The fixed images and the model's reconstructions as one uint8 image (see pair_grid)."""
    return pair_grid(images, reconstruct(model, images), cols)


def epoch_grid_path(recon_dir: str | Path, epoch: int) -> Path:
    return Path(recon_dir) / f"epoch_{epoch:03d}.png"


def saved_grids(recon_dir: str | Path) -> list[tuple[int, Path]]:
    """(epoch, path) of every saved epoch grid, in epoch order."""
    found = []
    for p in Path(recon_dir).glob("epoch_*.png"):
        try:
            found.append((int(p.stem.split("_")[1]), p))
        except (IndexError, ValueError):
            continue
    return sorted(found)


def assemble_gif(recon_dir: str | Path, path: str | Path, seconds_per_frame: float = 0.5) -> Path:
    """One GIF frame per saved epoch grid, each captioned with its epoch."""
    from .imageio import caption_strip, read_png, save_gif
    frames = []
    for epoch, p in saved_grids(recon_dir):
        grid = read_png(p)
        if grid.ndim == 3:  # colour datasets: GIF frames in grey keep one palette
            grid = grid.mean(axis=2).astype(np.uint8)
        frames.append(np.concatenate([caption_strip(f"epoch {epoch}", grid.shape[1]), grid]))
    if frames and len({f.shape for f in frames}) > 1:
        raise EffcnError(f"the grids in {recon_dir} differ in size; delete the stray ones.")
    return save_gif(frames, path, seconds_per_frame)
