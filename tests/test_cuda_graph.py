"""The capturable step (training/cuda_graph.py, TrainStep.train, optim.CapturableAdam): its logic
is deterministic, schedules reach it without a rebuild, train.cuda_graph says why it cannot be
used, and kernels per step are counted. Graph replay itself needs CUDA (skipped without one)."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from effcn.errors import ConfigError
from effcn.tools.bench import (BenchSettings, EffcnContender, count_kernels, kernel_ops,
                               kernels_per_step)
from effcn.training.config_io import load_config
from effcn.training.cuda_graph import graph_refusal, use_cuda_graph
from effcn.training.ema import EMA
from effcn.training.optim import CapturableAdam, build_optimizer, keras_epsilon
from effcn.training.step import TrainStep
from effcn.training.trainer import Trainer

from helpers import quick_overrides

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def contender(device: str = "cpu", augment: str = "paper") -> EffcnContender:
    return EffcnContender(BenchSettings(model="efficient_capsnet_tiny", batch_size=8, steps=1,
                                        eval_images=8, device=device, augment=augment))


def capturable_parts(c: EffcnContender):
    """(step, ema, sums) of ``c``'s model with a CapturableAdam and an EMA, as a graph run has."""
    config = load_config(None)
    step = TrainStep(c.model, c.task, build_optimizer(config, c.model.parameters(), True),
                     c.amp_dtype, c.step.memory_format)
    sums = torch.zeros(5 + len(c.task.extra_parts), dtype=torch.float64, device=c.device)
    return step, EMA(c.model, 0.9), sums


def everything(step: TrainStep, ema: EMA, sums: torch.Tensor) -> list[torch.Tensor]:
    opt = step.optimizer.state_dict()
    state = [t for s in opt["state"].values() for t in s.values() if torch.is_tensor(t)]
    return [*step.model.state_dict().values(), *state, *ema.state_dict().values(), sums]


def test_the_captured_steps_logic_run_twice_from_one_state_gives_identical_state():
    c = contender()
    step, ema, sums = capturable_parts(c)
    idx = torch.arange(8)
    step.train(idx, torch.Generator().manual_seed(1), sums, ema)  # optimizer state exists
    twin = copy.deepcopy((step, ema, sums))
    gen = torch.Generator().manual_seed(2)
    state = gen.get_state()
    for s in (step, twin[0]):
        s.model.train()
    rows = [step.train(idx, gen, sums, ema)]
    gen.set_state(state)
    rows.append(twin[0].train(idx, gen, twin[2], twin[1]))
    assert torch.equal(rows[0], rows[1])
    before = everything(*twin)
    after = everything(step, ema, sums)
    assert len(before) == len(after) > 10
    assert all(torch.equal(a, b) for a, b in zip(after, before))
    assert sums[-1] == 16  # two steps of 8 images


def test_capturable_adam_matches_the_fused_keras_adam_and_swaps_state_dicts():
    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(7)]
    fused = [p.clone().requires_grad_() for p in start]
    graph = [p.clone().requires_grad_() for p in start]
    a = keras_epsilon(torch.optim.Adam(fused, lr=1e-3, eps=1e-7, fused=True))
    b = CapturableAdam(graph, lr=1e-3, eps=1e-7)
    for _ in range(30):
        grads = [torch.randn_like(p) * 1e-3 for p in start]
        for ps in (fused, graph):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
        a.step()
        b.step()
    moved = max((p - s).abs().max() for p, s in zip(fused, start))
    assert moved > 1e-3
    assert max((p - q).abs().max() for p, q in zip(fused, graph)) < 1e-4 * moved
    saved = b.state_dict()["param_groups"][0]
    assert saved["keras_step"] == 30 and saved["eps"] == pytest.approx(a.param_groups[0]["eps"])
    again = keras_epsilon(torch.optim.Adam(fused, lr=1e-3, eps=1e-7, fused=True))
    again.load_state_dict(b.state_dict())  # a graph run's checkpoint resumes eagerly
    group = again.param_groups[0]
    assert group["keras_step"] == 30 and group["fused"] and not group["capturable"]
    graph_again = CapturableAdam(graph, lr=1e-3, eps=1e-7)
    graph_again.load_state_dict(a.state_dict())  # and an eager run's resumes as a graph run
    for opt in (a, graph_again):
        for p, g in zip(opt.param_groups[0]["params"], grads):
            p.grad = g.clone()
    before = [p.detach().clone() for p in graph]
    graph_again.step()
    assert all(not torch.equal(p, q) for p, q in zip(before, graph))


def test_a_schedules_new_learning_rate_takes_effect_without_rebuilding_the_step():
    c = contender()
    step, ema, sums = capturable_parts(c)
    gen, idx = torch.Generator().manual_seed(0), torch.arange(8)
    step.train(idx, gen, sums, ema)
    schedule = torch.optim.lr_scheduler.LambdaLR(step.optimizer, lambda epoch: 0.0)
    assert step.optimizer.param_groups[0]["lr"] == 0.0
    before = [p.detach().clone() for p in c.model.parameters()]
    step.train(idx, gen, sums, ema)  # lr 0: the same step object leaves the weights alone
    assert all(torch.equal(a, p) for a, p in zip(before, c.model.parameters()))
    schedule.lr_lambdas[0] = lambda epoch: 1.0
    schedule.step()
    step.train(idx, gen, sums, ema)
    assert any(not torch.equal(a, p) for a, p in zip(before, c.model.parameters()))


def test_train_cuda_graph_says_why_it_cannot_be_used(synthetic_root, tmp_path):
    config = load_config(None, quick_overrides(synthetic_root, tmp_path))
    cpu = torch.device("cpu")
    assert "CUDA device" in graph_refusal(config, cpu)
    assert not use_cuda_graph(config, cpu)  # auto: eager on the CPU
    config.train.cuda_graph = "on"
    with pytest.raises(ConfigError, match="train.cuda_graph=on is not possible here"):
        use_cuda_graph(config, cpu)
    with pytest.raises(ConfigError, match="train.cuda_graph"):
        load_config(None, ["train.cuda_graph=sometimes"])
    cuda = torch.device("cuda")
    if hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        for change, words in ((("train", "skip_nonfinite", True), "skip_nonfinite"),
                              (("train", "compile", True), "train.compile"),
                              (("optim", "name", "sgd"), "SGD")):
            changed = copy.deepcopy(config)
            setattr(getattr(changed, change[0]), change[1], change[2])
            assert words in graph_refusal(changed, cuda)


def test_kernels_per_step_are_counted_and_drop_without_augmentation():
    with_aug = kernels_per_step(contender())
    without = kernels_per_step(contender(augment="none"))
    assert isinstance(with_aug, int) and 0 < without < with_aug
    assert count_kernels(lambda: torch.zeros(3).view(3, 1).t()) == 1  # a view is no kernel


def test_kernel_parts_add_up_to_the_step():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "kernel_parts.py"
    spec = importlib.util.spec_from_file_location("kernel_parts", path)
    kernel_parts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernel_parts)
    c = contender()
    parts = kernel_parts.part_ops(c)
    total = sum(sum(ops.values()) for ops in parts.values())
    assert 0 < total <= count_kernels(c.train_step)
    assert parts["optimizer step"] and "aten::randn" in parts["batch composition + augmentation"]
    assert sum(kernel_ops(lambda: torch.zeros(3) + 1).values()) == 2


def test_the_warm_up_before_a_capture_leaves_no_trace():
    """GraphedStep._warm_up's eager steps (run on the CPU here, without a stream) make the
    optimizer's state and then put everything back: weights, buffers, EMA, sums and generator
    as they were, the new Adam moments and step counts zero, as a fresh Adam's are."""
    from effcn.training.cuda_graph import GraphedStep
    c = contender()
    step, ema, sums = capturable_parts(c)
    sums += 1.0
    graphed = GraphedStep(step, ema, 8, c.device, warmup=2)
    gen, sums = graphed.begin_epoch(torch.Generator().manual_seed(3), sums)
    graphed.idx.copy_(torch.arange(8))
    before = [t.clone() for t in graphed._state_tensors()]
    state_before = gen.get_state()
    assert not step.optimizer.state
    c.model.train()
    graphed._warm_up()
    assert all(torch.equal(a, b) for a, b in zip(before, graphed._state_tensors()))
    assert torch.equal(gen.get_state(), state_before)
    moments = [v for s in step.optimizer.state.values() for v in s.values()]
    assert moments and all(not v.any() for v in moments)


@cuda_only
def test_graph_replay_equals_the_eager_step():
    from effcn.training.cuda_graph import GraphedStep
    c = contender("cuda")
    step, ema, sums = capturable_parts(c)
    twin_step, twin_ema, twin_sums = copy.deepcopy((step, ema, sums))
    graphed = GraphedStep(step, ema, 8, c.device, warmup=1)
    gen = torch.Generator(device="cuda").manual_seed(3)
    g, s = graphed.begin_epoch(gen, sums)
    eager_gen = torch.Generator(device="cuda").manual_seed(3)
    c.model.train()
    twin_step.model.train()
    for i in range(4):  # one eager warm-up, the capture, replays
        idx = torch.arange(8 * i, 8 * i + 8, device="cuda")
        row = graphed(idx)
        eager = twin_step.train(idx, eager_gen, twin_sums, twin_ema)
        torch.testing.assert_close(row, eager)
    for a, b in zip(everything(step, ema, s), everything(twin_step, twin_ema, twin_sums)):
        torch.testing.assert_close(a, b)
    assert g.get_state().equal(eager_gen.get_state())  # the replays advanced the generator


@pytest.fixture
def deterministic_kernels():
    """cuDNN's and torch's deterministic kernels for one test (CUDA's defaults use atomics in
    some backward passes, so two identical CUDA runs differ after a few Adam steps; measured by
    benchmarks/cuda_determinism.py)."""
    from effcn.training.environment import deterministic_kernels
    before = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
              torch.are_deterministic_algorithms_enabled())
    deterministic_kernels()
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[:2]
    torch.use_deterministic_algorithms(before[2])


def test_train_deterministic_switches_to_deterministic_kernels(synthetic_root, tmp_path,
                                                               monkeypatch):
    """train.deterministic=true (off by default) sets what made two H200 runs agree bit for
    bit (benchmarks/cuda_determinism.py); false leaves torch's settings as they are."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms",
                        lambda mode, warn_only=False: calls.append((mode, warn_only)))
    base = quick_overrides(synthetic_root, tmp_path, epochs=1) + ["data.train_subset=64"]
    Trainer(load_config(None, base + ["run.name=default"]), quiet=True).fit()
    assert calls == [] and not torch.backends.cudnn.deterministic
    Trainer(load_config(None, base + ["run.name=det", "train.deterministic=true"]),
            quiet=True).fit()
    assert calls == [(True, True)] and torch.backends.cudnn.deterministic
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


@cuda_only
def test_a_resumed_graph_run_equals_an_uninterrupted_one(synthetic_root, tmp_path,
                                                         deterministic_kernels):
    from effcn.training.checkpoint import load_checkpoint
    base = quick_overrides(synthetic_root, tmp_path, epochs=2) + [
        "train.device=cuda", "train.cuda_graph=on", "train.amp=off", "train.ema_decay=0.9"]
    whole = Trainer(load_config(None, base + ["run.name=whole"]), quiet=True)
    assert whole.fit()["cuda_graph"]
    half = Trainer(load_config(None, base + ["run.name=half", "train.epochs=1"]), quiet=True)
    half.fit()
    Trainer(load_config(None, base + ["run.name=half"]), run_dir=half.run_dir, resume=True,
            quiet=True).fit()
    a = load_checkpoint(whole.run.last, map_location="cpu")
    b = load_checkpoint(half.run.last, map_location="cpu")
    for part in ("model", "ema"):
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k])


def test_evaluation_at_a_fixed_batch_shape_counts_only_the_real_images():
    from effcn.training.evaluate import evaluate
    from effcn.training.tasks.classification import ImageSet
    c = contender()
    subset = ImageSet(c.data.images[:21], c.data.labels[:21])  # batches of 8, 8 and 5
    plain = evaluate(c.model, c.task, subset, batch_size=8, predictions=True)
    padded = evaluate(c.model, c.task, subset, batch_size=8, predictions=True, fixed_shape=True)
    shapes = []
    evaluate(c.model, c.task, subset, batch_size=8, fixed_shape=True,
             forward=lambda x, y, dtype: shapes.append(tuple(x.shape)) or c.model(x, y))
    assert shapes == [(8, 1, 28, 28)] * 3
    assert padded["images"] == plain["images"] == 21
    assert torch.equal(padded["predictions"], plain["predictions"])
    torch.testing.assert_close(padded["lengths"], plain["lengths"])
    for k in ("loss", "margin", "recon", "acc"):
        assert padded[k] == pytest.approx(plain[k], rel=1e-5)


@cuda_only
def test_a_graph_captured_evaluation_equals_the_eager_one():
    from effcn.training.cuda_graph import GraphedForward
    from effcn.training.evaluate import evaluate
    from effcn.training.tasks.classification import ImageSet
    c = contender("cuda")
    subset = ImageSet(c.data.images[:21], c.data.labels[:21])
    eager = evaluate(c.model, c.task, subset, batch_size=8, predictions=True)
    graphed = GraphedForward(c.model)
    for _ in range(2):  # captured once, replayed after
        again = evaluate(c.model, c.task, subset, batch_size=8, predictions=True,
                         forward=graphed)
        torch.testing.assert_close(again["lengths"], eager["lengths"])
        assert again["acc"] == pytest.approx(eager["acc"])
    assert len(graphed.graphs) == 1  # one shape: the last batch was padded


def test_a_resumed_run_of_the_capturable_step_equals_an_uninterrupted_one(synthetic_root,
                                                                            tmp_path, monkeypatch):
    """What a graph run replays (CapturableAdam, EMA, TrainStep.train), eagerly on the CPU:
    stopping after epoch 1 and resuming gives bit for bit the uninterrupted run's weights."""
    from effcn.training import state
    from effcn.training.checkpoint import load_checkpoint
    build = state.build_optimizer
    monkeypatch.setattr(state, "build_optimizer",
                        lambda config, params, capturable=False: build(config, params, True))
    base = quick_overrides(synthetic_root, tmp_path, epochs=2) + ["train.ema_decay=0.9",
                                                                  "train.amp=off"]
    whole = Trainer(load_config(None, base + ["run.name=whole"]), quiet=True)
    whole.fit()
    assert isinstance(whole.optimizer, CapturableAdam)
    half = Trainer(load_config(None, base + ["run.name=half", "train.epochs=1"]), quiet=True)
    half.fit()
    Trainer(load_config(None, base + ["run.name=half"]), run_dir=half.run_dir, resume=True,
            quiet=True).fit()
    a = load_checkpoint(whole.run.last, map_location="cpu")
    b = load_checkpoint(half.run.last, map_location="cpu")
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])


@cuda_only
def test_the_graph_launches_a_step_at_once():
    from effcn.tools.bench import device_profile
    figures = {}
    for graph in (False, True):
        c = EffcnContender(BenchSettings(model="efficient_capsnet_tiny", batch_size=8, steps=1,
                                         eval_images=8, device="cuda", cuda_graph=graph))
        for _ in range(5):
            c.train_step()
        figures[graph] = device_profile(c.train_step)
    assert figures[False]["kernels_per_step"] > 50 and figures[True]["kernels_per_step"] > 50
    assert figures[True]["launches_per_step"] < 10 < figures[False]["launches_per_step"]
