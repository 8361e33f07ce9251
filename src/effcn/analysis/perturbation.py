"""Capsule dimension perturbation (Sabour et al. 2017; the authors' popular figure).

Take the winning (longest) class capsule of one input, add delta to one of its dimensions for
each delta in a range, and decode; one row per dimension. Rows whose images change show what that
dimension encodes (stroke thickness, width, slant, ...).
"""

from __future__ import annotations

import numpy as np
import torch

from .probe import as_float, require_decoder


@torch.no_grad()
def perturb_capsule(model, image: torch.Tensor, deltas=None, label: int | None = None) -> dict:
    """image (C, H, W) uint8 or float -> {'reconstructions' float (D, S, C, H, W),
    'deltas' (S,), 'class' (the decoded capsule's class), 'capsule' (D,)}.

    Row d, column s decodes the capsule with deltas[s] added to dimension d; the capsule decoded
    is ``label``'s when given, else the longest (the prediction).
    """
    require_decoder(model, "capsule perturbation")
    deltas = torch.linspace(-0.25, 0.25, 11) if deltas is None else torch.as_tensor(deltas)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        x = as_float(image.unsqueeze(0).to(device))
        capsules = model(x).capsules                                   # (1, n_cls, D)
        k = int(capsules.norm(dim=-1).argmax()) if label is None else int(label)
        n_dim, n_step = capsules.shape[2], len(deltas)
        batch = capsules.repeat(n_dim * n_step, 1, 1)                  # (D * S, n_cls, D)
        rows = torch.arange(n_dim, device=device).repeat_interleave(n_step)
        batch[torch.arange(len(batch), device=device), k, rows] += deltas.to(device).repeat(n_dim)
        labels = torch.full((len(batch),), k, dtype=torch.long, device=device)
        recon = model.reconstruct(batch, labels)
    finally:
        model.train(was_training)
    return {"reconstructions": recon.view(n_dim, n_step, *recon.shape[1:]).cpu(),
            "deltas": deltas.cpu(), "class": k, "capsule": capsules[0, k].cpu()}


def dimension_effect(result: dict) -> np.ndarray:
    """(D,) mean absolute pixel change between the two ends of each row: which dimensions
    change the image most."""
    r = result["reconstructions"]
    return (r[:, -1] - r[:, 0]).abs().flatten(1).mean(1).numpy()


def perturbation_grid(result: dict) -> np.ndarray:
    """uint8 image with one row per dimension, one column per delta."""
    from .reconstructions import tile, to_uint8
    r = result["reconstructions"]
    n_dim, n_step = r.shape[:2]
    return tile(to_uint8(r.flatten(0, 1)), n_step)


def plot_perturbation(result: dict, image: torch.Tensor | None = None, class_name: str = ""):
    """The grid with dimensions (and their mean |change|) and deltas labelled, the input beside."""
    from .imageio import pyplot
    from .reconstructions import PAD, SCALE, to_uint8
    plt = pyplot()
    r = result["reconstructions"]
    n_dim, n_step = r.shape[:2]
    size = r.shape[-1] * SCALE + PAD
    effect = dimension_effect(result)
    grid = perturbation_grid(result)
    fig, (ax_in, ax) = plt.subplots(1, 2, figsize=(0.55 * n_step + 2.6, 0.55 * n_dim + 0.8),
                                    gridspec_kw={"width_ratios": [1.3, n_step],
                                                                 "wspace": 0.45})
    cmap = "gray" if grid.ndim == 2 else None
    ax.imshow(grid, cmap=cmap, vmin=0, vmax=255)
    centres = PAD + np.arange(max(n_dim, n_step)) * size + (size - PAD) / 2
    ax.set_yticks(centres[:n_dim], [f"dim {d} ({effect[d]:.3f})" for d in range(n_dim)],
                  fontsize=7)
    ax.set_xticks(centres[:n_step], [f"{round(float(v), 4) + 0.0:+.2f}" for v in result["deltas"]], fontsize=7)
    ax.xaxis.tick_top()
    ax_in.axis("off")
    ax_in.set_anchor("N")
    if image is not None:
        ax_in.imshow(to_uint8(image.unsqueeze(0))[0], cmap=cmap)
        ax_in.set_title("input", fontsize=8)
    fig.suptitle(f"capsule {class_name or result['class']}: delta added to one dimension "
                 f"(rows), mean |pixel change| end to end in brackets", fontsize=8)
    return fig
