"""Routing ("attention") scores of self-attention routing: coupling coefficients and agreement.

For an input, c[j, i] (B, n_out, n_in) is the softmax over output (class) capsules j of the
agreement A[j, i]: how much primary capsule i sends to class j; it sums to 1 over j. The forward
pass weights the predictions u_hat[j, i] by c[j, i] + b[j, i] (b: a learned bias, zero at the
start). The entropy of c over classes, divided by log(n_out), says whether routing does anything:
1 means every primary capsule spreads evenly over the classes (uniform routing), lower means it
picks classes.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .probe import forward_batches, require_capsules


def routing_scores(model, images: torch.Tensor, batch_size: int = 500) -> dict:
    """images (N, C, H, W) -> {'coupling' c (N, n_out, n_in), 'agreement' A (N, n_out, n_in),
    'lengths' (N, n_out), 'predictions' (N,)}, on the CPU."""
    require_capsules(model, "routing coefficients")
    out = forward_batches(model, images, batch_size, return_routing=True)
    if "routing" not in out:
        from ..errors import EffcnError
        raise EffcnError(f"model {getattr(model, 'model_name', type(model).__name__)} returned "
                         f"no routing coefficients; routing maps need a capsule network with "
                         f"routing.")
    return {"coupling": out["routing"], "agreement": out["agreement"],
            "lengths": out["lengths"], "predictions": out["lengths"].argmax(1)}


def coupling_per_class(coupling: torch.Tensor, labels: torch.Tensor,
                       num_classes: int) -> np.ndarray:
    """Mean c over the examples of each true class: (num_classes, n_out, n_in); NaN for a class
    without examples."""
    n_out, n_in = coupling.shape[1:]
    out = np.full((num_classes, n_out, n_in), np.nan, dtype=np.float64)
    for k in range(num_classes):
        mask = labels.cpu() == k
        if mask.any():
            out[k] = coupling[mask].double().mean(0).numpy()
    return out


def coupling_to_true_class(per_class: np.ndarray) -> np.ndarray:
    """(num_classes, n_out, n_in) -> (num_classes, n_in): row k is mean c[k, i] over the
    examples of class k (the diagonal over the first two axes)."""
    k = min(per_class.shape[0], per_class.shape[1])
    return per_class[np.arange(k), np.arange(k)]


def routing_entropy(coupling: torch.Tensor, predictions: torch.Tensor | None = None) -> dict:
    """Summary of how selective routing is, over all examples and primary capsules.

    entropy_ratio: H(c[:, i]) / log(n_out), 1 = uniform; max_coupling: max_j c[j, i];
    to_predicted: share of c going to the predicted class (uniform: 1/n_out).
    """
    c = coupling.double().clamp_min(1e-12)
    n_out = c.shape[1]
    ratio = -(c * c.log()).sum(1) / math.log(n_out)       # (N, n_in)
    q = torch.quantile(ratio.flatten().float(), torch.tensor([0.05, 0.5, 0.95])).tolist()
    summary = {"examples": int(c.shape[0]), "classes": n_out, "primary_capsules": int(c.shape[2]),
               "entropy_ratio_mean": float(ratio.mean()), "entropy_ratio_p05": q[0],
               "entropy_ratio_median": q[1], "entropy_ratio_p95": q[2],
               "max_coupling_mean": float(c.max(1).values.mean()),
               "uniform_coupling": 1.0 / n_out}
    if predictions is not None:
        idx = predictions.view(-1, 1, 1).expand(-1, 1, c.shape[2])
        summary["to_predicted_mean"] = float(c.gather(1, idx).mean())
    return summary


def describe_entropy(summary: dict) -> str:
    """One sentence a user can read."""
    r = summary["entropy_ratio_mean"]
    verdict = ("close to uniform: routing barely discriminates" if r > 0.99 else
               "routing is selective" if r < 0.8 else "routing is mildly selective")
    text = (f"routing entropy {r:.3f} of uniform (median {summary['entropy_ratio_median']:.3f}), "
            f"mean max coupling {summary['max_coupling_mean']:.3f} vs uniform "
            f"{summary['uniform_coupling']:.3f}")
    if "to_predicted_mean" in summary:
        text += f", share to the predicted class {summary['to_predicted_mean']:.3f}"
    return f"{text}: {verdict}."


# ------------------------------------------------------------------------------ plots
def plot_class_coupling(per_class: np.ndarray, class_names: list[str], title: str = ""):
    """Left: mean coupling to the true class (class x primary capsule). Right: for each true
    class, the mean coupling of every primary capsule to every class (n_out x n_in)."""
    from .imageio import pyplot
    plt = pyplot()
    n_cls, n_out, n_in = per_class.shape
    cols = 5
    rows = -(-n_cls // cols)
    fig = plt.figure(figsize=(4 + 2.4 * cols, max(3.2, 1.9 * rows)))
    grid = fig.add_gridspec(rows, cols + 2, width_ratios=[2.2, 0.2] + [1] * cols)
    ax = fig.add_subplot(grid[:, 0])
    true = coupling_to_true_class(per_class)
    im = ax.imshow(true, cmap="viridis", vmin=0, vmax=max(float(np.nanmax(true)), 1e-6),
                   aspect="auto")
    ax.set_yticks(range(len(true)), class_names[:len(true)])
    ax.set_xlabel("primary capsule i")
    ax.set_ylabel("true class k")
    ax.set_title("mean c[k, i] to the true class")
    fig.colorbar(im, ax=ax, fraction=0.05)
    vmax = float(np.nanmax(per_class))
    for k in range(n_cls):
        a = fig.add_subplot(grid[k // cols, 2 + k % cols])
        a.imshow(per_class[k], cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
        a.set_title(f"class {class_names[k]}", fontsize=8)
        a.set_xticks([])
        a.set_yticks([])
        if k % cols == 0:
            a.set_ylabel("class j", fontsize=7)
        if k // cols == rows - 1:
            a.set_xlabel("primary i", fontsize=7)
    fig.suptitle(title or "coupling coefficients c[j, i], mean over validation images")
    return fig


def plot_example_coupling(images: torch.Tensor, coupling: torch.Tensor, labels: torch.Tensor,
                          predictions: torch.Tensor, class_names: list[str]):
    """For each example: the image and its coupling map c (n_out x n_in)."""
    from .imageio import pyplot
    from .reconstructions import to_uint8
    plt = pyplot()
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(1.9 * n, 4.2), squeeze=False,
                             gridspec_kw={"height_ratios": [1, 1.3]})
    pics = to_uint8(images)
    vmax = max(float(coupling.max()), 1e-6)
    for k in range(n):
        axes[0, k].imshow(pics[k], cmap="gray" if pics.ndim == 3 else None)
        axes[0, k].set_title(f"true {class_names[int(labels[k])]} / pred "
                             f"{class_names[int(predictions[k])]}", fontsize=7)
        axes[0, k].axis("off")
        im = axes[1, k].imshow(coupling[k].numpy(), cmap="viridis", vmin=0, vmax=vmax,
                               aspect="auto")
        axes[1, k].set_xlabel("primary i", fontsize=7)
        axes[1, k].set_yticks(range(coupling.shape[1]), class_names[:coupling.shape[1]],
                              fontsize=6)
        axes[1, k].tick_params(axis="x", labelsize=6)
    fig.colorbar(im, ax=axes[1, :].tolist(), fraction=0.02)
    fig.suptitle("coupling c[j, i] of single examples (rows: class j; uniform = "
                 f"{1 / coupling.shape[1]:.2f})")
    return fig


def plot_coupling_over_epochs(epochs: list[int], true_maps: list[np.ndarray],
                              entropies: list[float], class_names: list[str]):
    """One heatmap of mean coupling to the true class per saved epoch, and the entropy ratio."""
    from .imageio import pyplot
    plt = pyplot()
    n = len(epochs)
    fig, axes = plt.subplots(1, n + 1, figsize=(2.6 * n + 3.2, 3.4), squeeze=False)
    vmax = max(float(np.nanmax(m)) for m in true_maps)
    for k, (epoch, m) in enumerate(zip(epochs, true_maps)):
        ax = axes[0, k]
        im = ax.imshow(m, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
        ax.set_title(f"epoch {epoch}", fontsize=9)
        ax.set_yticks(range(len(m)), class_names[:len(m)], fontsize=6)
        ax.set_xlabel("primary i", fontsize=7)
    fig.colorbar(im, ax=axes[0, :n].tolist(), fraction=0.03)
    ax = axes[0, n]
    ax.plot(epochs, entropies, "o-")
    ax.set_xticks(epochs)
    ax.axhline(1.0, color="grey", ls="--", lw=0.8)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("epoch")
    ax.set_title("entropy / log(classes)", fontsize=9)
    fig.suptitle("mean coupling to the true class across saved epochs")
    return fig
