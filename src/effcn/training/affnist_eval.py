"""affNIST next to MNIST-40 for a run trained on 40x40 digits (the affNIST protocol's test).

The real affNIST test set is used when its files are found (``effcn datasets`` shows where it is
looked for), the generated ``affnist_style`` set otherwise; the result always names which.
"""

from __future__ import annotations

import torch

from .trainer import evaluate_model


def affnist_test_set(root=None):
    """(dataset object, set name): the real affNIST test set when found, else affnist_style."""
    from ..data.affnist import AffNIST, AffNISTStyle
    if AffNIST.locate(root, "test") is not None:
        return AffNIST(root, "test"), "affnist"
    return AffNISTStyle(root, "test"), "affnist_style"


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor, names) -> dict:
    """{class name: accuracy} over the classes present in ``labels``."""
    out = {}
    for c, name in enumerate(names):
        mask = labels == c
        if mask.any():
            out[name] = float((predictions[mask] == c).float().mean())
    return out


def wants_affnist(model) -> bool:
    """True for 40x40 single-channel 10-class models (trained on MNIST-40 or the like)."""
    cfg = model.config
    return (getattr(cfg, "image_size", None) == 40 and getattr(cfg, "in_channels", None) == 1
            and getattr(cfg, "num_classes", None) == 10)


def evaluate_affnist(model, root, device, recon_weight: float, batch_size: int) -> dict:
    """affNIST (or affNIST-style) test accuracy, overall and per class."""
    ds, name = affnist_test_set(root)
    images, labels = ds.images.unsqueeze(1).to(device), ds.labels.long().to(device)
    result = evaluate_model(model, images, labels, recon_weight, batch_size, return_predictions=True)
    per_class = per_class_accuracy(result["predictions"], labels, [str(i) for i in range(10)])
    return {"set": name, "images": len(labels), "acc": result["acc"], "per_class_acc": per_class}


def side_by_side(first_name: str, first: dict, second_name: str, second: dict) -> str:
    """A text table: one row per class and 'all', one column per test set."""
    lines = [f"{'class':<7}{first_name:>14}{second_name:>16}"]
    for c in first["per_class_acc"]:
        a, b = first["per_class_acc"][c], second["per_class_acc"].get(c, float("nan"))
        lines.append(f"{c:<7}{a:>14.4f}{b:>16.4f}")
    lines.append(f"{'all':<7}{first['acc']:>14.4f}{second['acc']:>16.4f}")
    lines.append(f"{'images':<7}{first['images']:>14}{second['images']:>16}")
    return "\n".join(lines)
