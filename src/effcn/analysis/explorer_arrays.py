"""The arrays behind the capsule explorer (``effcn explore``): per image, the class capsules,
their lengths, the routing coefficients and the reconstructions of the longest capsules."""

from __future__ import annotations

import torch

from .probe import as_float, forward_batches, require_capsules


@torch.no_grad()
def explorer_arrays(model, images: torch.Tensor, n_decoded: int = 1,
                    batch_size: int = 256) -> dict:
    """images (N, C, H, W) uint8 or float in [0, 1] ->

    capsules (N, n_classes, D), lengths (N, n_classes), coupling c (N, n_out, n_in) or None
    (a model that returns no routing), decoded: the classes of the ``n_decoded`` longest
    capsules (N, n_decoded), longest first, and reconstructions (N, n_decoded, C, H, W) in
    [0, 1], each decoded from its class's capsule alone (the masked decoder), or None without a
    decoder. All float32 on the CPU.
    """
    require_capsules(model, "capsules to explore")
    out = forward_batches(model, images, batch_size, return_routing=True)
    capsules, lengths = out["capsules"].float(), out["lengths"].float()
    decoded = lengths.topk(min(n_decoded, lengths.shape[1]), dim=1).indices
    recon = None
    if getattr(model, "decoder", None) is not None:
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            parts = [model.reconstruct(capsules[s:s + batch_size].to(device),
                                       decoded[s:s + batch_size].to(device)).float().cpu()
                     for s in range(0, len(capsules), batch_size)]
        finally:
            model.train(was_training)
        recon = torch.cat(parts)
    coupling = out.get("routing")
    return {"images": as_float(images).cpu(), "capsules": capsules, "lengths": lengths,
            "coupling": None if coupling is None else coupling.float(),
            "decoded": decoded, "reconstructions": recon}
