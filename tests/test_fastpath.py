"""The fast path on CPU: product-and-sum primary capsules, bf16 autocast, channels_last, fused
Adam, torch.compile's switch, ``effcn bench`` and the benchmark's reference implementation."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from effcn.tools.bench import BenchSettings, run_bench, synthetic_images
from effcn.cli import main
from effcn.errors import ConfigError
from effcn.models import create_model
from effcn.training import fastpath
from effcn.training.checkpoint import model_from_checkpoint
from effcn.training.config_io import load_config
from effcn.training.tasks.classification import classification_loss_parts
from effcn.training.trainer import Trainer

from helpers import REPO, quick_overrides

CPU = torch.device("cpu")


def _set_product(model, on: bool):
    for m in model.modules():
        if hasattr(m, "full_map_product"):
            m.full_map_product = on


def test_product_primary_caps_equal_the_depthwise_conv_with_gradients():
    torch.manual_seed(0)
    model = create_model("efficient_capsnet_tiny").train()  # 9x9 kernel on a 9x9 map, as MNIST
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    results = []
    for on in (True, False):
        _set_product(model, on)
        model.zero_grad()
        out = model(x, y)
        classification_loss_parts(None, out, x, y, 0.392)[0].backward()
        results.append((out.lengths.detach(), model.primary.conv.weight.grad.clone(),
                        model.stem[0].weight.grad.clone()))
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_product_path_is_only_taken_when_the_kernel_covers_the_map():
    model = create_model("efficient_capsnet_multimnist")  # 5x5 stride 2 on a 7x7 map
    calls = []
    model.primary.conv.register_forward_hook(lambda *a: calls.append(1))
    model(torch.rand(1, 1, 36, 36))
    assert calls == [1]
    mnist = create_model("efficient_capsnet_tiny")
    mnist.primary.conv.register_forward_hook(lambda *a: calls.append(2))
    mnist(torch.rand(1, 1, 28, 28))
    assert calls == [1]  # the conv module was not called: the product ran instead
    fastpath.prepare_model(mnist, channels_last=True)  # NHWC: the conv is as fast, so it runs
    mnist(torch.rand(2, 1, 28, 28))
    assert calls == [1, 2]


def test_amp_setting_resolves_per_device(monkeypatch):
    monkeypatch.setattr(fastpath, "cpu_has_native_bf16", lambda: False)
    assert fastpath.amp_dtype("auto", CPU) is None
    monkeypatch.setattr(fastpath, "cpu_has_native_bf16", lambda: True)
    assert fastpath.amp_dtype("auto", CPU) is torch.bfloat16
    assert fastpath.amp_dtype("off", CPU) is None
    assert fastpath.amp_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert fastpath.amp_dtype("bf16", CPU) is torch.bfloat16
    assert fastpath.amp_dtype("off", torch.device("cuda")) is None
    with pytest.raises(ConfigError, match="train.amp"):
        fastpath.amp_dtype("fp16", CPU)
    with pytest.raises(ConfigError, match="train.amp"):
        load_config(None, ["train.amp=fp16"])


def test_native_bf16_probe_answers_and_survives_a_failing_probe(monkeypatch):
    assert isinstance(fastpath.cpu_has_native_bf16(), bool)

    def broken():
        raise RuntimeError("no cpuinfo")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", broken, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken, raising=False)
    assert fastpath.cpu_has_native_bf16() is False


def test_bf16_forward_gives_fp32_outputs_close_to_fp32_and_fp32_gradients():
    torch.manual_seed(0)
    model = create_model("efficient_capsnet_tiny").eval()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    ref = fastpath.forward(model, x, y, None)
    out = fastpath.forward(model, x, y, torch.bfloat16)
    assert out.lengths.dtype == torch.float32 and out.reconstruction.dtype == torch.float32
    assert (out.lengths - ref.lengths).abs().max() < 0.01   # bf16 convs, fp32 capsule math
    assert not torch.equal(out.lengths, ref.lengths)         # autocast really ran in bf16
    classification_loss_parts(None, out, x, y, 0.392)[0].backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in model.parameters() if p.grad is not None)


def test_channels_last_gives_the_same_numbers():
    torch.manual_seed(0)
    model = create_model("efficient_capsnet_mnist").eval()
    x = torch.rand(4, 1, 28, 28)
    ref = model(x).lengths
    fastpath.prepare_model(model, channels_last=True)
    assert model.stem[3].weight.is_contiguous(memory_format=torch.channels_last)
    out = model(x.contiguous(memory_format=torch.channels_last)).lengths
    assert torch.allclose(out, ref, atol=1e-5)


def test_compile_switch_off_is_the_model_itself():
    model = create_model("efficient_capsnet_tiny")
    assert fastpath.maybe_compile(model, False) is model


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch, mode):
    """reduce-overhead (CUDA graphs) becomes default off CUDA; a backend that cannot compile
    leaves the eager model, so a run never fails for want of a compiler."""
    model = create_model("efficient_capsnet_tiny")
    asked = []

    def broken_compile(m, mode=None):
        asked.append(mode)
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(UserWarning, match="no C.. compiler.*training eagerly"):
        assert fastpath.maybe_compile(model, True, mode) is model
    assert asked == [None if mode == "default" or not torch.cuda.is_available() else mode]


@pytest.mark.slow  # compiling takes minutes on a busy 2-core CPU
def test_compiled_model_matches_eager():
    torch.manual_seed(0)
    model = create_model("efficient_capsnet_tiny").eval()
    x = torch.rand(4, 1, 28, 28)
    compiled = fastpath.maybe_compile(model, True)
    assert torch.allclose(compiled(x).lengths, model(x).lengths, atol=1e-5)


def test_trainer_runs_the_fast_path_and_saves_plain_fp32_weights(synthetic_root, tmp_path):
    overrides = quick_overrides(synthetic_root, tmp_path, epochs=1, name="fast") + [
        "data.train_subset=64", "train.amp=bf16", "train.channels_last=true", "optim.fused=true"]
    trainer = Trainer(load_config(None, overrides), quiet=True)
    summary = trainer.fit()
    assert trainer.amp_dtype is torch.bfloat16
    assert trainer.model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    assert trainer.optimizer.defaults["fused"] is True
    model, state = model_from_checkpoint(tmp_path / "fast" / "checkpoints" / "best.pt")
    assert all(v.dtype in (torch.float32, torch.int64) for v in state["model"].values())
    assert 0 <= summary["test_acc"] <= 1


def test_run_bench_reports_medians_and_epoch_seconds():
    s = BenchSettings(model="efficient_capsnet_tiny", batch_size=4, device="cpu", steps=2,
                      eval_images=8, repeats=2, warmup=1)
    r = run_bench(s)
    tr = r["train_images_per_s"]
    assert tr["n"] == 2 and 0 < tr["min"] <= tr["median"] <= tr["max"]
    assert r["eval_images_per_s"]["median"] > 0
    assert r["seconds_per_mnist_epoch"]["median"] == pytest.approx(55_000 / tr["median"])
    assert r["peak_memory_mb"] > 0


def test_bench_cli(capsys):
    assert main(["bench", "--model", "efficient_capsnet_tiny", "--batch-size", "4", "--steps",
                 "1", "--repeats", "1", "--warmup", "1", "--eval-images", "8", "--device",
                 "cpu", "--amp", "bf16", "--no-channels-last", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["precision"] == "bf16 autocast" and not result["settings"]["channels_last"]
    assert main(["bench", "--model", "no_such_model"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["bench", "--model", "efficient_capsnet_tiny", "--batch-size", "0"]) == 2


def test_synthetic_images_are_uint8_with_a_bright_box():
    images, labels = synthetic_images(5, 1, 28)
    assert images.dtype == torch.uint8 and images.shape == (5, 1, 28, 28)
    assert (images.flatten(1) == 255).any(1).all() and labels.shape == (5,)


def test_reference_model_is_the_same_network_and_its_augmentation_keeps_shape():
    pytest.importorskip("scipy")
    pytest.importorskip("PIL")
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from reference import PerSampleDataset, ReferenceCapsNet
    finally:
        sys.path.pop(0)
    torch.manual_seed(0)
    ours = create_model("efficient_capsnet_mnist").eval()
    ref = ReferenceCapsNet().eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.rand(4, 1, 28, 28)
    lengths, recon = ref(x)
    out = ours(x)
    assert torch.allclose(lengths, out.lengths, atol=1e-5)
    assert torch.allclose(recon, out.reconstruction, atol=1e-5)
    images, labels = synthetic_images(6, 1, 28)
    data = PerSampleDataset(images.squeeze(1).numpy(), labels.numpy(), augment=True)
    img, label = data[0]
    assert img.shape == (1, 28, 28) and 0 <= img.min() and img.max() <= 1
    assert not torch.equal(img, images[0].float() / 255)
