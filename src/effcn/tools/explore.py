"""``effcn explore RUN``: one self-contained HTML page to look inside a trained capsule network.

    effcn explore RUN [--out FILE.html] [--images N] [--checkpoint best|last]

The page (default RUN/figures/explorer.html) holds everything inline: styles, script, the first
N validation images, and per image its class capsules, their lengths, the routing coefficients
and the model's reconstructions (MultiMNIST: two, from the two longest capsules). It also holds
the decoder's weights (float16) and decodes in the browser: one slider per capsule dimension
moves the capsule's values and the image is decoded again at once, by a JavaScript decoder that
computes what the PyTorch decoder computes. No server, no network: open it from disk.
"""

from __future__ import annotations

import base64
import html
import json
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ..errors import EffcnError

ASSETS = "explore_assets"
FLOAT16_MAX = 65504.0


def encode_array(array, dtype: str) -> dict:
    """A numpy/torch array as {'dtype': u8|i32|f16|f32, 'shape', 'data': base64 little-endian}."""
    a = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    np_dtype = {"u8": "u1", "i32": "<i4", "f16": "<f2", "f32": "<f4"}[dtype]
    data = np.ascontiguousarray(a.astype(np_dtype)).tobytes()
    return {"dtype": dtype, "shape": [int(s) for s in a.shape],
            "data": base64.b64encode(data).decode("ascii")}


def decode_array(entry: dict) -> np.ndarray:
    """The inverse of ``encode_array`` (float16 comes back as float16)."""
    np_dtype = {"u8": "u1", "i32": "<i4", "f16": "<f2", "f32": "<f4"}[entry["dtype"]]
    return np.frombuffer(base64.b64decode(entry["data"]), dtype=np_dtype).reshape(entry["shape"])


def _weights(array: np.ndarray) -> dict:
    """Weights as float16 (half the size), float32 where float16 would overflow."""
    fits = not array.size or float(np.abs(array).max()) < FLOAT16_MAX
    return encode_array(array, "f16" if fits else "f32")


def encode_decoder(exported: dict) -> dict:
    """An exported decoder (analysis.decoder_export) with its arrays encoded for the page:
    weights float16, biases float32."""
    ops = []
    for op in exported["ops"]:
        op = dict(op)
        if "weight" in op:
            op["weight"] = _weights(op["weight"])
            op["bias"] = encode_array(op["bias"], "f32")
        ops.append(op)
    return {**exported, "ops": ops}


def display_u8(images: torch.Tensor) -> torch.Tensor:
    """Float images (..., C, H, W) in [0, 1] -> uint8 for display; images outside [0, 1]
    (normalised inputs) are scaled per image from their min to their max."""
    x = images.float()
    if len(x) and (x.min() < 0 or x.max() > 1):
        flat = x.flatten(-3)
        lo, hi = flat.min(-1, keepdim=True).values, flat.max(-1, keepdim=True).values
        x = ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(x)
    return x.clamp(0, 1).mul(255).round().to(torch.uint8)


def build_payload(model, state: dict, config, arrays: dict, labels: torch.Tensor,
                  run_name: str, checkpoint: str, summary: dict) -> dict:
    """Everything the page shows, as JSON-ready data (arrays base64-encoded)."""
    from .._version import __version__
    from ..analysis.decoder_export import export_decoder
    from ..analysis.probe import model_label
    from ..training.checkpoint import class_names_of
    n_classes, caps_dim = arrays["capsules"].shape[1:]
    names = class_names_of(state, n_classes)
    decoder = getattr(model, "decoder", None)
    exported = export_decoder(decoder)
    if decoder is None:
        no_decoder = ("this model was built without a decoder (model.args.decoder=none): it has "
                      "no reconstructions and nothing to decode")
    elif exported is None:
        no_decoder = (f"the decoder ({type(decoder).__name__}) has no portable form, so it "
                      f"cannot decode in the browser")
    else:
        no_decoder = None
    coupling = arrays["coupling"]
    recon = arrays["reconstructions"]
    labels = labels.view(len(labels), -1)
    return {
        "meta": {"run": run_name, "model": model_label(model), "checkpoint": checkpoint,
                 "epoch": state.get("epoch"), "dataset": config.data.dataset,
                 "split": "validation", "images": len(labels), "num_classes": int(n_classes),
                 "caps_dim": int(caps_dim), "image_shape": list(arrays["images"].shape[1:]),
                 "best_val_acc": summary.get("best_val_acc"),
                 "metric": summary.get("test_metric") or "accuracy",
                 "effcn": __version__},
        "class_names": names,
        "labels": encode_array(labels, "i32"),
        "images": encode_array(display_u8(arrays["images"]), "u8"),
        "capsules": encode_array(arrays["capsules"], "f32"),
        "lengths": encode_array(arrays["lengths"], "f32"),
        "decoded": encode_array(arrays["decoded"], "i32"),
        "coupling": None if coupling is None else encode_array(coupling, "f16"),
        "reconstructions": None if recon is None else encode_array(display_u8(recon), "u8"),
        "decoder": None if exported is None else encode_decoder(exported),
        "no_decoder": no_decoder,
    }


def _asset(name: str) -> str:
    return (resources.files("effcn.tools") / ASSETS / name).read_text(encoding="utf-8")


def render_page(payload: dict) -> str:
    """The HTML page: the template with its CSS, its script and ``payload`` inlined."""
    data = json.dumps(payload, separators=(",", ":"))
    # Inside <script>, "</" could end the element; "<" never appears escaped otherwise.
    data = data.replace("<", "\\u003c")
    title = html.escape(f"effcn explorer: {payload['meta']['run']}")
    page = _asset("explorer.html")
    page = page.replace("__EFFCN_TITLE__", title)
    page = page.replace("/*__EFFCN_CSS__*/", _asset("explorer.css"))
    page = page.replace("/*__EFFCN_JS__*/", _asset("explorer.js"))
    before, marker, after = page.partition("__EFFCN_DATA__")
    if not marker:
        raise RuntimeError("the explorer template has no __EFFCN_DATA__ marker")
    return before + data + after


def explore_run(run: str | Path, out: str | Path | None = None, n_images: int = 64,
                checkpoint: str = "best", say=print) -> Path:
    """Write the explorer page of a run (see the module docstring); returns its path.

    ``n_images`` validation images (all of them when the split has fewer); ``checkpoint``:
    best | last. The model is run on the CPU."""
    from ..analysis.explorer_arrays import explorer_arrays
    from ..analysis.probe import require_capsules
    from ..io import atomic_write_text
    from ..training.evaluate import prepare_run_evaluation
    if n_images < 1:
        raise EffcnError(f"--images must be at least 1, got {n_images}.")
    if checkpoint not in ("best", "last"):
        raise EffcnError(f"--checkpoint {checkpoint!r} is not best or last; pick one of them.")
    e = prepare_run_evaluation(run, checkpoint, split="val", device="cpu")
    require_capsules(e.model, "capsules to explore")
    n = min(n_images, len(e.eval_set))
    if n < n_images:
        say(f"the validation split has {n} images; the page shows all of them.")
    batch = e.eval_set.batch(0, n)
    labels = batch.y.cpu()
    n_decoded = labels.shape[1] if labels.dim() == 2 else 1
    e.model.eval()
    arrays = explorer_arrays(e.model, batch.x, n_decoded)
    payload = build_payload(e.model, e.state, e.config, arrays, labels, e.run.name,
                            Path(e.checkpoint).stem, e.run.summary())
    if payload["no_decoder"]:
        say(f"no live decoding: {payload['no_decoder']}.")
    path = Path(out) if out else e.run.figures / "explorer.html"
    atomic_write_text(path, render_page(payload))
    return path
