"""`effcn explore`, the Python side: the decoder exported as portable operations, the page
self-contained (no URL, no external file), its size, the weights and arrays it embeds; runs
without a decoder, MultiMNIST, the command's errors. The page in a browser: test_explore_browser.py.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from helpers import assert_one_sentence_error, effcn_in_process, write_untrained_run
from effcn.analysis.decoder_export import export_decoder, run_exported
from effcn.models import create_model
from effcn.tools.explore import decode_array, explore_run
from effcn.training.checkpoint import model_from_checkpoint

SILENT = dict(say=lambda _: None)


def page_payload(page: str) -> dict:
    """The JSON data a page embeds."""
    found = re.search(r'<script type="application/json" id="effcn-data">(.*?)</script>', page,
                      re.S)
    return json.loads(found.group(1))


def assert_self_contained(page: str) -> None:
    assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}/", page, re.I), "a URL in the page"
    assert not re.search(r"""\b(src|href)\s*=|<link\b|@import|url\(""", page, re.I), \
        "an external file in the page"
    assert page.count("<script") == 2 and "</html>" in page  # the data and the script, inline


@pytest.mark.parametrize("name,args", [
    ("efficient_capsnet_tiny", {}),
    ("efficient_capsnet_tiny", {"decoder": "conv", "decoder_hidden": (8, 8)}),
    ("efficient_capsnet_smallnorb_tiny", {}),
    ("capsnet_tiny", {}),
])
def test_exported_decoder_computes_what_the_decoder_computes(name, args):
    torch.manual_seed(0)
    model = create_model(name, **args).eval()
    exported = export_decoder(model.decoder)
    n_cls, dim = model.config.num_classes, model.config.caps_dim
    assert exported["in_features"] == n_cls * dim
    capsules = torch.randn(3, n_cls, dim) * 0.5
    labels = torch.tensor([0, n_cls - 1, 2])
    with torch.no_grad():
        expected = model.reconstruct(capsules, labels).flatten(1).numpy()
    assert list(model.reconstruct(capsules, labels).shape[1:]) == exported["out_shape"]
    for b in range(3):
        masked = torch.zeros(n_cls, dim)
        masked[labels[b]] = capsules[b, labels[b]]
        got = run_exported(exported, masked.flatten().numpy())
        np.testing.assert_allclose(got, expected[b], atol=1e-5)
    assert export_decoder(None) is None


def test_the_page_is_self_contained_and_embeds_the_run(tiny_run, tmp_path):
    out = explore_run(tiny_run.path, out=tmp_path / "x.html", n_images=20, **SILENT)
    page = out.read_text()
    assert_self_contained(page)
    data = page_payload(page)
    model, _ = model_from_checkpoint(tiny_run.path / "checkpoints" / "best.pt")
    model.eval()
    assert data["meta"]["images"] == 20 and data["meta"]["caps_dim"] == model.config.caps_dim
    # the embedded weights are the decoder's, within float16's precision
    linears = [m for m in model.decoder.net if isinstance(m, torch.nn.Linear)]
    weights = [op for op in data["decoder"]["ops"] if op["op"] == "linear"]
    assert len(weights) == len(linears) == 3
    for op, linear in zip(weights, linears):
        w, ref = decode_array(op["weight"]).astype(np.float32), linear.weight.detach().numpy()
        assert op["weight"]["dtype"] == "f16" and w.shape == ref.shape
        assert np.all(np.abs(w - ref) <= np.abs(ref) * 2.0 ** -11 + 2.0 ** -24)
        np.testing.assert_array_equal(decode_array(op["bias"]), linear.bias.detach().numpy())
    assert [op["op"] for op in data["decoder"]["ops"]] == ["linear", "relu", "linear", "relu",
                                                           "linear", "sigmoid"]
    # the capsules, lengths and reconstructions are the model's on the first validation images
    from effcn.training.evaluate import prepare_run_evaluation
    e = prepare_run_evaluation(tiny_run.path, split="val", device="cpu")
    batch = e.eval_set.batch(0, 20)
    with torch.no_grad():
        ref = model(batch.x)
    np.testing.assert_allclose(decode_array(data["capsules"]), ref.capsules.numpy(), atol=1e-6)
    np.testing.assert_allclose(decode_array(data["lengths"]), ref.lengths.numpy(), atol=1e-6)
    assert decode_array(data["labels"]).ravel().tolist() == batch.y.tolist()
    assert decode_array(data["decoded"]).ravel().tolist() == ref.lengths.argmax(1).tolist()
    recon = decode_array(data["reconstructions"])
    assert recon.shape == (20, 1, 1, 28, 28)
    assert np.abs(recon[:, 0] / 255.0 - ref.reconstruction.numpy()).max() <= 0.5 / 255 + 1e-6
    coupling = decode_array(data["coupling"]).astype(np.float32)
    assert coupling.shape == (20, 10, model.config.num_primary_caps())
    np.testing.assert_allclose(coupling.sum(1), 1, atol=1e-2)
    assert decode_array(data["images"]).shape == (20, 1, 28, 28)


def test_mnist_preset_page_is_under_10_mb(synthetic_root, tmp_path):
    run = write_untrained_run(tmp_path / "mnist", synthetic_root, "efficient_capsnet_mnist",
                              ["data.val_size=64"])
    out = explore_run(run, n_images=64, **SILENT)
    assert out == run / "figures" / "explorer.html"
    size = out.stat().st_size
    print(f"explorer page of the MNIST preset, 64 images: {size / 1e6:.2f} MB")
    assert size < 10e6
    data = page_payload(out.read_text())
    n_weights = sum(int(np.prod(op["weight"]["shape"])) for op in data["decoder"]["ops"]
                    if "weight" in op)
    assert n_weights == 160 * 512 + 512 * 1024 + 1024 * 784  # the whole decoder, float16


def test_multimnist_page_has_two_reconstructions(synthetic_root, tmp_path, monkeypatch):
    from effcn.data.multimnist import MultiMNIST
    monkeypatch.setattr(MultiMNIST, "sha256", {})  # the synthetic files are not MNIST's
    run = write_untrained_run(tmp_path / "mm", synthetic_root, "efficient_capsnet_multimnist",
                              ["data.dataset=multimnist", "data.augment=none"],
                              decoder_hidden=(32, 64))
    data = page_payload(explore_run(run, n_images=12, **SILENT).read_text())
    assert decode_array(data["labels"]).shape == (12, 2)
    decoded = decode_array(data["decoded"])
    lengths = decode_array(data["lengths"])
    assert decoded.shape == (12, 2)
    assert (decoded == np.argsort(-lengths, axis=1)[:, :2]).all()  # the two longest capsules
    assert decode_array(data["reconstructions"]).shape == (12, 2, 1, 36, 36)
    assert decode_array(data["images"]).shape == (12, 1, 36, 36)
    assert data["decoder"]["out_shape"] == [1, 36, 36]


def test_a_run_without_decoder_still_gets_its_page(synthetic_root, tmp_path):
    run = write_untrained_run(tmp_path / "nodec", synthetic_root, "efficient_capsnet_tiny",
                              decoder="none")
    said = []
    page = explore_run(run, n_images=8, say=said.append).read_text()
    assert_self_contained(page)
    data = page_payload(page)
    assert data["decoder"] is None and data["reconstructions"] is None
    assert "without a decoder" in data["no_decoder"] and "without a decoder" in said[-1]
    assert data["coupling"] is not None and decode_array(data["lengths"]).shape == (8, 10)


def test_the_command(tiny_run, synthetic_root, tmp_path, capsys):
    out = tmp_path / "page.html"
    code, stdout, _ = effcn_in_process(["explore", tiny_run.path, "--out", out, "--images", "500",
                                        "--checkpoint", "last"], capsys)
    assert code == 0 and f"written: {out}" in stdout
    assert "has 40 images" in stdout  # fewer than asked: all of them, said so
    assert page_payload(out.read_text())["meta"]["checkpoint"] == "last"
    code, _, err = effcn_in_process(["explore", tiny_run.path, "--images", "0"], capsys)
    assert_one_sentence_error(code, err, "--images must be at least 1")
    code, _, err = effcn_in_process(["explore", tmp_path / "nope"], capsys)
    assert_one_sentence_error(code, err, "does not exist")
    cnn = write_untrained_run(tmp_path / "cnn", synthetic_root, "cnn_baseline_tiny")
    code, _, err = effcn_in_process(["explore", cnn], capsys)
    assert_one_sentence_error(code, err, "has no capsules")
