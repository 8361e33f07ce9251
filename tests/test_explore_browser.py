"""The explorer page in headless Chromium, opened from disk (file://): pick an image, switch the
decoded class, move sliders; the decoded pixels equal the PyTorch decoder's for the same capsule
values, a slider move redraws in under 50 ms (MNIST preset), nothing is fetched, the console
stays clean. Marked ``browser``; skipped, saying what to install, without Chromium (conftest.py's
``chromium`` fixture)."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import torch

from helpers import write_untrained_run
from effcn.tools.explore import explore_run
from effcn.training.checkpoint import model_from_checkpoint

pytestmark = pytest.mark.browser
TOLERANCE = 1e-2  # |JS - PyTorch| per pixel; float16 weights give about 1e-3

MOVE_SLIDER = """
const s = document.querySelector('#sliders input[data-dim="' + arguments[0] + '"]');
s.value = String(arguments[1]);
const t0 = performance.now();
s.dispatchEvent(new Event('input', {bubbles: true}));
const ms = performance.now() - t0;
const x = window.effcnExplorer;
return {ms: ms, pixels: Array.from(x.last.pixels), all: x.last.all.map(a => Array.from(a)),
        state: x.state(), reported: x.last.ms};
"""


def open_page(driver, path):
    """Load a page from disk; returns its console and network logs once it is ready."""
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get_log("browser"), driver.get_log("performance")  # drop earlier pages' entries
    driver.get(path.resolve().as_uri())
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return !!(window.effcnExplorer && window.effcnExplorer.ready)"))


def assert_clean(driver):
    """No console errors or warnings; every request the page made was for file: or data:."""
    console = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert not console, console
    urls = [json.loads(e["message"])["message"].get("params", {}).get("request", {}).get("url")
            for e in driver.get_log("performance")]
    fetched = [u for u in urls if u and not u.startswith(("file:", "data:", "about:"))]
    assert not fetched, fetched


def pytorch_decode(model, capsules, cls: int) -> np.ndarray:
    """The PyTorch decoder on the page's capsules (K * D values) masked to class ``cls``."""
    k, d = model.config.num_classes, model.config.caps_dim
    caps = torch.tensor(capsules, dtype=torch.float32).view(1, k, d)
    with torch.no_grad():
        return model.reconstruct(caps, torch.tensor([cls])).flatten().numpy()


def click(driver, css: str):
    from selenium.webdriver.common.by import By
    driver.find_element(By.CSS_SELECTOR, css).click()


def check_sliders(driver, model, moves, slot: int = 0) -> float:
    """Move (dim, offset) sliders of the active slot; returns the largest |JS - PyTorch|."""
    worst = 0.0
    for dim, offset in moves:
        state = driver.execute_script("return window.effcnExplorer.state()")
        cls = state["slots"][state["active"]]
        value = state["capsules"][cls * model.config.caps_dim + dim] + offset
        r = driver.execute_script(MOVE_SLIDER, dim, value)
        assert r["state"]["capsules"][cls * model.config.caps_dim + dim] == \
            pytest.approx(value, abs=1e-3)  # the slider's step
        js = np.array(r["all"][slot])
        np.testing.assert_array_equal(js, r["pixels"])
        diff = np.abs(js - pytorch_decode(model, r["state"]["capsules"], cls))
        worst = max(worst, float(diff.max()))
    assert worst < TOLERANCE
    return worst


def check_direct_decode(driver, model, seed: int = 0) -> float:
    """effcnExplorer.decode on random capsules (lengths up to 1) against PyTorch."""
    gen = np.random.default_rng(seed)
    k, d = model.config.num_classes, model.config.caps_dim
    worst = 0.0
    for cls in (0, k - 1, 2):
        vec = gen.normal(size=d)
        vec *= gen.uniform(0.3, 1.0) / np.linalg.norm(vec)
        js = np.array(driver.execute_script("return window.effcnExplorer.decode(arguments[0], "
                                            "arguments[1])", cls, vec.tolist()))
        full = np.zeros((k, d))
        full[cls] = vec
        worst = max(worst, float(np.abs(js - pytorch_decode(model, full.ravel(), cls)).max()))
    assert worst < TOLERANCE
    return worst


def test_mnist_preset_decodes_live_as_pytorch_does_and_fast(chromium, synthetic_root, tmp_path):
    run = write_untrained_run(tmp_path / "mnist", synthetic_root, "efficient_capsnet_mnist",
                              ["data.val_size=64"], seed=1)
    page = explore_run(run, n_images=64, say=lambda _: None)
    model, _ = model_from_checkpoint(run / "checkpoints" / "best.pt")
    model.eval()
    open_page(chromium, page)
    click(chromium, '#grid canvas[data-index="5"]')
    state = chromium.execute_script("return window.effcnExplorer.state()")
    assert state["image"] == 5
    # at first the live decode is the reconstruction: the capsule of the longest class
    first = np.array(chromium.execute_script("return Array.from(window.effcnExplorer.last.pixels)"))
    assert np.abs(first - pytorch_decode(model, state["capsules"], state["slots"][0])).max() \
        < TOLERANCE
    assert chromium.execute_script("return document.querySelectorAll('#sliders input').length") \
        == model.config.caps_dim == 16
    click(chromium, "#classes button:nth-of-type(4)")  # decode class 3 instead
    assert chromium.execute_script("return window.effcnExplorer.state().slots") == [3]
    worst = check_sliders(chromium, model, [(0, 0.45), (7, -0.4), (15, 0.3), (7, 0.2)])
    worst = max(worst, check_direct_decode(chromium, model))
    times = [chromium.execute_script(MOVE_SLIDER, 9, v)["ms"]
             for v in np.linspace(-0.45, 0.45, 31)]
    median = statistics.median(times)
    print(f"MNIST preset: slider redraw median {median:.1f} ms (max {max(times):.1f} ms), "
          f"max |JS - PyTorch| {worst:.2e}")
    assert median < 50
    assert_clean(chromium)


def test_trained_tiny_run_and_reset(chromium, tiny_run, tmp_path):
    page = explore_run(tiny_run.path, out=tmp_path / "tiny.html", say=lambda _: None)
    model, _ = model_from_checkpoint(tiny_run.path / "checkpoints" / "best.pt")
    model.eval()
    open_page(chromium, page)
    click(chromium, '#grid canvas[data-index="3"]')
    original = chromium.execute_script("return window.effcnExplorer.state()")
    check_sliders(chromium, model, [(2, 0.3), (11, -0.3)])
    assert chromium.execute_script("return window.effcnExplorer.state().capsules") != \
        original["capsules"]
    click(chromium, "#reset")  # back to the model's capsule and its reconstruction
    after = chromium.execute_script("return window.effcnExplorer.state()")
    assert after["capsules"] == original["capsules"]
    pixels = np.array(chromium.execute_script("return Array.from(window.effcnExplorer.last.pixels)"))
    assert np.abs(pixels - pytorch_decode(model, original["capsules"], original["slots"][0])).max() \
        < TOLERANCE
    chromium.find_element("tag name", "body").send_keys("\ue014")  # the right arrow key
    assert chromium.execute_script("return window.effcnExplorer.state().image") == 4
    assert_clean(chromium)


def test_multimnist_second_digit_decodes_live(chromium, synthetic_root, tmp_path, monkeypatch):
    from effcn.data.multimnist import MultiMNIST
    monkeypatch.setattr(MultiMNIST, "sha256", {})
    run = write_untrained_run(tmp_path / "mm", synthetic_root, "efficient_capsnet_multimnist",
                              ["data.dataset=multimnist", "data.augment=none"],
                              decoder_hidden=(64, 128))
    page = explore_run(run, n_images=16, say=lambda _: None)
    model, _ = model_from_checkpoint(run / "checkpoints" / "best.pt")
    model.eval()
    open_page(chromium, page)
    click(chromium, '#grid canvas[data-index="2"]')
    assert chromium.execute_script("return document.querySelectorAll('#images canvas').length") \
        == 7  # input, two reconstructions and their overlay, two live decodes and theirs
    click(chromium, "#slots button:nth-of-type(2)")  # edit the second digit's capsule
    state = chromium.execute_script("return window.effcnExplorer.state()")
    assert state["active"] == 1 and len(state["slots"]) == 2
    check_sliders(chromium, model, [(4, 0.4), (12, -0.35)], slot=1)
    r = chromium.execute_script(MOVE_SLIDER, 1, 0.2)
    first = pytorch_decode(model, r["state"]["capsules"], r["state"]["slots"][0])
    assert np.abs(np.array(r["all"][0]) - first).max() < TOLERANCE  # the first digit too
    assert_clean(chromium)


def test_conv_decoder_and_no_decoder(chromium, synthetic_root, tmp_path):
    conv = write_untrained_run(tmp_path / "conv", synthetic_root, "efficient_capsnet_tiny",
                               decoder="conv", decoder_hidden=(8, 8))
    model, _ = model_from_checkpoint(conv / "checkpoints" / "best.pt")
    model.eval()
    open_page(chromium, explore_run(conv, n_images=8, say=lambda _: None))
    check_sliders(chromium, model, [(3, 0.4), (5, -0.45)])
    check_direct_decode(chromium, model)
    assert_clean(chromium)
    bare = write_untrained_run(tmp_path / "bare", synthetic_root, "efficient_capsnet_tiny",
                               decoder="none")
    open_page(chromium, explore_run(bare, n_images=8, say=lambda _: None))
    text = chromium.execute_script("return document.body.innerText")
    assert "No live decoding" in text and "without a decoder" in text
    assert chromium.execute_script(
        "return getComputedStyle(document.getElementById('sliders-card')).display") == "none"
    assert chromium.execute_script("return document.querySelectorAll('#bars .bar').length") == 10
    assert chromium.execute_script("return document.querySelectorAll('#routing canvas').length") == 1
    assert_clean(chromium)
