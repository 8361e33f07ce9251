"""Running a trained model over images for analysis: capability checks and batched forwards."""

from __future__ import annotations

import torch

from ..errors import EffcnError


def model_label(model) -> str:
    return getattr(model, "model_name", type(model).__name__)


def has_capsules(model) -> bool:
    """False for models (e.g. CNN baselines) that declare ``has_capsules = False``."""
    return bool(getattr(model, "has_capsules", True))


def require_capsules(model, what: str) -> None:
    if not has_capsules(model):
        raise EffcnError(f"model {model_label(model)} has no capsules, so it has no {what}; "
                         f"pick a capsule network's run for this figure.")


def require_decoder(model, what: str = "reconstructions") -> None:
    require_capsules(model, what)
    if getattr(model, "decoder", None) is None:
        raise EffcnError(f"model {model_label(model)} was built without a decoder "
                         f"(model.args.decoder=none), so it has no {what}; use a run with a "
                         f"decoder.")


def as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1]; float images pass through."""
    return images.float().div(255) if images.dtype == torch.uint8 else images.float()


@torch.no_grad()
def forward_batches(model, images: torch.Tensor, batch_size: int = 500,
                    return_routing: bool = False) -> dict:
    """Eval-mode forward over images (N, C, H, W), uint8 or float in [0, 1], on the model's
    device. Returns the CapsNetOutput fields that are not None, concatenated on the CPU."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts: dict[str, list] = {}
    try:
        for start in range(0, len(images), batch_size):
            x = as_float(images[start:start + batch_size].to(device))
            out = model(x, return_routing=return_routing)
            for name, value in out._asdict().items():
                if value is not None:
                    parts.setdefault(name, []).append(value.detach().cpu())
    finally:
        model.train(was_training)
    return {name: torch.cat(values) for name, values in parts.items()}
