"""MultiMNIST: the two-digit reading of a model (two_label_forward) and the figure of overlapping
pairs with the two reconstructions coloured differently.

The figure needs matplotlib (``pip install 'effcn[viz]'``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..capsules import capsule_lengths


def colour_pair(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Two (H, W) maps in [0, 1] -> an RGB image (H, W, 3): first in red, second in cyan
    (overlapping strokes look white)."""
    return torch.stack([first, second, second], dim=-1).clamp(0, 1)


def two_label_forward(model, x: torch.Tensor, labels2: torch.Tensor | None = None):
    """Capsule lengths (B, C) and two reconstructions (B, 2, C_img, H, W) or None: decoded from
    the capsules of the true labels ``labels2`` (B, 2), or with None of the two longest."""
    if labels2 is None:
        capsules = model.encode(x)
        lengths = capsule_lengths(capsules)
        return lengths, model.reconstruct(capsules, lengths.topk(2, dim=1).indices)
    out = model(x, labels2)
    return out.lengths, out.reconstruction


@torch.no_grad()
def overlap_figure(model, pairs, path: str | Path, n: int = 6, pool: int = 500) -> Path:
    """Save a figure of the ``n`` most overlapping of the first ``pool`` pairs of ``pairs``
    (a MultiMNISTPairs): per row the input, the two true digits coloured, and the two
    reconstructions decoded from the two longest capsules (the model's own reading) coloured
    the same way, with true and predicted labels."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from ..errors import EffcnError
        raise EffcnError("the MultiMNIST figure needs matplotlib; install it with "
                         "pip install 'effcn[viz]'.") from None
    from ..io import atomic_write_bytes
    model.eval()
    x, y2, parts = pairs.batch(0, min(pool, len(pairs)))
    overlap = ((parts[:, 0] > 0.2) & (parts[:, 1] > 0.2)).flatten(1).sum(1)
    rows = overlap.argsort(descending=True)[:n]
    x, y2, parts = x[rows], y2[rows], parts[rows]
    lengths, recs = two_label_forward(model, x, None)
    pred = lengths.topk(2, dim=1).indices
    fig, axes = plt.subplots(len(rows), 3, figsize=(6, 2 * len(rows)), squeeze=False)
    for i in range(len(rows)):
        panels = [(x[i, 0].cpu(), "input", "gray"),
                  (colour_pair(parts[i, 0, 0], parts[i, 1, 0]).cpu(),
                   f"true {int(y2[i, 0])} (red) + {int(y2[i, 1])} (cyan)", None)]
        if recs is not None:
            panels.append((colour_pair(recs[i, 0, 0], recs[i, 1, 0]).cpu(),
                           f"recon {int(pred[i, 0])} (red) + {int(pred[i, 1])} (cyan)", None))
        for ax, (img, title, cmap) in zip(axes[i], panels):
            ax.imshow(img.numpy(), cmap=cmap, vmin=0, vmax=1)
            ax.set_title(title, fontsize=8)
        for ax in axes[i]:
            ax.axis("off")
    fig.tight_layout()
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
