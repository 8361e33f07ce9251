"""The authors' training setup, exactly: each point where effcn used to differ from their code
is now their way by default, and effcn's old way is a named option (its old behaviour tested)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from effcn.data.multimnist import AnyOtherImage, MultiMNISTPairs
from effcn.models import create_model
from effcn.training.config_io import load_config
from effcn.training.optim import build_optimizer
from effcn.training.splits import Split
from effcn.training.tasks import ClassificationTask, MultiMNISTTask
from effcn.training.tasks.multimnist import two_label_loss


def keras_adam(w0, grads, lr=5e-4, b1=0.9, b2=0.999, eps=1e-7):
    """Keras' Adam update, written out (tf.keras.optimizers.Adam, TF 2.15)."""
    w, m, v = w0.copy(), np.zeros_like(w0), np.zeros_like(w0)
    for t, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
    return w


@pytest.mark.parametrize("fused", [False, True])
def test_adam_places_epsilon_as_keras_does_and_resumes_exactly(fused):
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=64)
    # small gradients, where epsilon matters (weights whose gradients are near zero)
    grads = [rng.normal(size=64) * 10 ** rng.uniform(-7, -2, size=64) for _ in range(6)]
    want = keras_adam(w0, grads)
    dtype = torch.float32 if fused else torch.float64

    def run(placement, steps, optimizer_state=None, start=None):
        p = torch.nn.Parameter(torch.tensor(w0 if start is None else start, dtype=dtype))
        opt = build_optimizer(load_config(None, [f"optim.eps_placement={placement}",
                                                 f"optim.fused={str(fused).lower()}"]), [p])
        if optimizer_state is not None:
            opt.load_state_dict(optimizer_state)
        for g in steps:
            p.grad = torch.tensor(g, dtype=dtype)
            opt.step()
        return p.detach().double().numpy(), opt.state_dict()

    keras, _ = run("keras", grads)
    error = np.abs(keras - want).max()
    assert error < (1e-6 if fused else 1e-15)                 # float32 rounding / exact
    pytorch, _ = run("pytorch", grads)
    assert np.abs(pytorch - want).max() > 1e-4 > 100 * error  # what the placement changes
    half, state = run("keras", grads[:3])                     # a resumed run continues exactly
    resumed, _ = run("keras", grads[3:], state, start=half)
    assert np.array_equal(resumed, keras)


def test_primary_capsules_start_as_keras_glorot_uniform():
    torch.manual_seed(0)
    w = create_model("efficient_capsnet_mnist").primary.conv.weight     # (128, 1, 9, 9)
    limit = math.sqrt(6 / (81 + 81 * 128))                               # Keras' fans
    assert w.abs().max() <= limit and w.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.02)
    old = create_model("efficient_capsnet_mnist", primary_init="he_normal").primary.conv.weight
    assert old.std().item() == pytest.approx(0.157, rel=0.05)           # effcn's earlier init


def test_instance_norm_starts_uniform_as_in_the_authors_code():
    torch.manual_seed(0)
    norms = [m for m in create_model("efficient_capsnet_smallnorb").modules()
             if isinstance(m, torch.nn.InstanceNorm2d)]
    assert len(norms) == 4
    for m in norms:
        for t in (m.weight, m.bias):
            assert t.abs().max() <= 0.05 and t.std() > 0.02              # spread over the range
    old = create_model("efficient_capsnet_smallnorb", instance_norm_init="ones_zeros")
    norm = next(m for m in old.modules() if isinstance(m, torch.nn.InstanceNorm2d))
    assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)


def test_pixels_divided_as_the_config_says():
    images = torch.full((4, 1, 28, 28), 255, dtype=torch.uint8)
    labels = torch.arange(4)
    for divisor in (255, 256):
        config = load_config(None, ["data.augment=none", f"data.pixel_divisor={divisor}"])
        task = ClassificationTask(config)
        split = Split(images, labels, [])
        task.setup(split, split)
        x = task.train_batch(torch.arange(4), torch.Generator()).x
        assert x.max().item() == 255 / divisor
        assert task.val_set().batch(0, 4).x.max().item() == 255 / divisor


def test_the_paper_mnist_config_is_the_authors_setup():
    config = load_config("configs/mnist.yaml")
    assert config.data.pixel_divisor == 256 and config.optim.eps_placement == "keras"
    assert config.optim.eps == 1e-7 and config.train.batch_size == 16
    model = create_model(config.model.name, **config.model.args)
    assert model.config.primary_init == "glorot_uniform"


def test_multimnist_partners_are_any_other_image():
    torch.manual_seed(0)
    labels = torch.arange(10_000) % 10
    idx = torch.arange(10_000)
    partner = AnyOtherImage(10_000)(idx, torch.Generator().manual_seed(1))
    assert not torch.any(partner == idx) and partner.min() >= 0 and partner.max() < 10_000
    same = (labels[partner] == labels).float().mean().item()
    assert same == pytest.approx(0.1, abs=0.015)                         # ~1/10 share a label


def test_a_shared_label_has_target_two_as_in_the_authors_loss():
    lengths = torch.tensor([[0.5, 0.2, 0.05, 0.05]])
    shared = two_label_loss(lengths, None, None, torch.tensor([[0, 0]]), recon_weight=0)[1]
    # T = 2 for class 0: 2 * (0.9 - 0.5)^2 - 0.5 * (0.5 - 0.1)^2, then class 1 absent
    expected = 2 * 0.4 ** 2 - 0.5 * 0.4 ** 2 + 0.5 * 0.1 ** 2
    assert shared.item() == pytest.approx(expected)


def test_multimnist_epoch_can_be_the_authors_600000_pairs():
    config = load_config(None, ["data.dataset=multimnist", "task.name=multimnist",
                                "data.augment=none", "task.args.epoch_pairs=250"])
    task = MultiMNISTTask(config)
    digits = torch.zeros(100, 1, 28, 28, dtype=torch.uint8)
    split = Split(digits, torch.arange(100) % 10, [])
    task.setup(split, split)
    order = task.epoch_order(torch.Generator().manual_seed(0))
    assert task.epoch_size == len(order) == 250
    for start in (0, 100):                                              # each pass a permutation
        assert sorted(order[start:start + 100].tolist()) == list(range(100))
    assert load_config("configs/multimnist.yaml").task.args["epoch_pairs"] == 600_000


def test_multimnist_test_pairs_as_the_authors_build_them():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (300,), generator=g)
    digits = torch.zeros(300, 1, 28, 28, dtype=torch.uint8)
    pairs = MultiMNISTPairs(digits, labels, partners=50, seed=3, n_digits=40, style="authors")
    first, second = pairs.first.view(40, 50), pairs.second.view(40, 50)
    shifts = pairs.shifts.view(40, 50, 4)
    assert torch.all(shifts[:, :, :2] == shifts[:, :1, :2])              # one shift per base digit
    assert shifts[:, :, 2:].float().std() > 2                             # partners shifted anew
    for row, base in zip(second, first[:, 0]):
        assert len(set(row.tolist())) == 50                               # without replacement
        assert torch.all(labels[row] != labels[base])                     # of other classes
    old = MultiMNISTPairs(digits, labels, partners=50, seed=3, n_digits=40, style="resampled")
    assert not torch.all(old.shifts.view(40, 50, 4)[:, :, :2] == old.shifts.view(40, 50, 4)[:, :1, :2])
    assert MultiMNISTTask.Args().test_style == "authors"
