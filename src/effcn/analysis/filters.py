"""First-layer convolution filters and the feature maps they produce for one input.

Works for any model with a Conv2d (capsule networks and CNN baselines alike): the first Conv2d in
module order is the first layer.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import EffcnError
from .probe import as_float, model_label


def first_conv(model) -> torch.nn.Conv2d:
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            return module
    raise EffcnError(f"model {model_label(model)} has no Conv2d layer, so it has no filters to "
                     f"show.")


def first_layer_filters(model) -> np.ndarray:
    """Weights of the first conv: (out_channels, in_channels, k, k)."""
    return first_conv(model).weight.detach().cpu().numpy()


@torch.no_grad()
def feature_maps(model, image: torch.Tensor) -> np.ndarray:
    """image (C, H, W) -> the first conv's output for it, (out_channels, h, w), before the
    activation and normalisation that follow it."""
    conv = first_conv(model)
    device = next(model.parameters()).device
    captured = {}

    def keep(module, inputs, output) -> None:  # must return None (a value replaces the output)
        # a copy: the in-place activation that follows would overwrite the output tensor
        captured["out"] = output.detach().clone()
    hook = conv.register_forward_hook(keep)
    was_training = model.training
    model.eval()
    try:
        model(as_float(image.unsqueeze(0).to(device)))
    finally:
        hook.remove()
        model.train(was_training)
    return captured["out"][0].cpu().numpy()


def _square(n: int) -> tuple[int, int]:
    cols = int(np.ceil(np.sqrt(n)))
    return -(-n // cols), cols


def plot_filters(weights: np.ndarray):
    """One panel per output channel (first input channel, or RGB when there are 3), shared
    symmetric colour scale (blue negative, red positive)."""
    from .imageio import pyplot
    plt = pyplot()
    n = weights.shape[0]
    rows, cols = _square(n)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 0.9 + 0.5), squeeze=False)
    lim = float(np.abs(weights).max()) or 1.0
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        w = weights[k]
        if w.shape[0] == 3:
            ax.imshow((w.transpose(1, 2, 0) / lim + 1) / 2)
        else:
            ax.imshow(w[0], cmap="RdBu_r", vmin=-lim, vmax=lim)
    fig.suptitle(f"first-layer filters ({n} x {weights.shape[1]} x {weights.shape[2]}x"
                 f"{weights.shape[3]}; red +, blue -)", fontsize=9)
    return fig


def plot_feature_maps(image: torch.Tensor, maps: np.ndarray):
    """The input and each first-layer feature map (own colour scale per map)."""
    from .imageio import pyplot
    from .reconstructions import to_uint8
    plt = pyplot()
    n = maps.shape[0]
    rows, cols = _square(n + 1)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.1 + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    pic = to_uint8(image.unsqueeze(0))[0]
    axes.flat[0].imshow(pic, cmap="gray" if pic.ndim == 2 else None)
    axes.flat[0].set_title("input", fontsize=7)
    for k in range(n):
        axes.flat[k + 1].imshow(maps[k], cmap="magma")
        axes.flat[k + 1].set_title(str(k), fontsize=6)
    fig.suptitle("first-layer feature maps (conv output, before activation)", fontsize=9)
    return fig
