"""MultiMNIST: pair generator properties, the two-label loss and the two-digit metric against
hand-computed values, and a tiny end-to-end train + eval with the overlap figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from effcn.data.multimnist import (MAX_SHIFT, MultiMNIST, MultiMNISTPairs, PartnerSampler,
                                   compose, compose_batch, pad_digits)
from effcn.analysis.multimnist import two_label_forward
from effcn.training.tasks.multimnist import two_digit_accuracy, two_digit_found, two_label_loss


def mnist_like(n: int, seed: int = 0):
    """uint8 digits (n, 28, 28) with content only in the central 20x20 (MNIST's 4-px margin)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 28, 28, dtype=torch.uint8)
    x[:, 4:24, 4:24] = (torch.rand(n, 20, 20, generator=g) > 0.5).to(torch.uint8) * 200
    return x, torch.arange(n) % 10


def test_pairs_sizes_ranges_whole_digits_and_different_labels():
    digits, labels = mnist_like(100)
    padded = pad_digits(digits)
    assert padded.shape == (100, 1, 36, 36)
    sampler = PartnerSampler(labels)
    g = torch.Generator().manual_seed(0)
    x, y2, parts = compose_batch(padded, labels, torch.arange(100), sampler, g)
    assert x.shape == (100, 1, 36, 36) and parts.shape == (100, 2, 1, 36, 36)
    assert x.min() >= 0 and x.max() <= 1 and x.dtype == torch.float32
    assert (y2[:, 0] != y2[:, 1]).all() and torch.equal(y2[:, 0], labels)
    torch.testing.assert_close(x, (parts[:, 0] + parts[:, 1]).clamp(0, 1))
    # shifts of at most 6 px keep every digit whole on the 36x36 canvas (8 px free per side)
    mass = digits.float().div(255).sum((1, 2))
    torch.testing.assert_close(parts[:, 0].sum((1, 2, 3)), mass)
    partner_mass = parts[:, 1].sum((1, 2, 3))
    assert all(any(torch.isclose(m, mass[labels == int(y2[i, 1])]).tolist())
               for i, m in enumerate(partner_mass))


def test_shifts_stay_within_six_pixels():
    one = torch.zeros(1, 1, 36, 36)
    one[0, 0, 17, 17] = 1.0
    shifts = torch.tensor([[-6, 6, 6, -6]])
    _, parts = compose(one, one, shifts)
    assert parts[0, 0, 0, 11, 23] == 1 and parts[0, 1, 0, 23, 11] == 1
    pairs = MultiMNISTPairs(*mnist_like(50), partners=20, seed=0)
    assert pairs.shifts.abs().max() == MAX_SHIFT and pairs.shifts.min() == -MAX_SHIFT


def test_partner_sampler_only_other_labels():
    labels = torch.arange(1000) % 10
    sampler = PartnerSampler(labels)
    query = torch.full((5000,), 3)
    partners = sampler(query, torch.Generator().manual_seed(1))
    got = labels[partners]
    assert (got != 3).all() and set(got.tolist()) == set(range(10)) - {3}


def test_test_set_is_fixed_by_its_seed():
    digits, labels = mnist_like(30)
    a = MultiMNISTPairs(digits, labels, partners=4, seed=0)
    b = MultiMNISTPairs(digits, labels, partners=4, seed=0)
    c = MultiMNISTPairs(digits, labels, partners=4, seed=1)
    assert len(a) == 120 and a.first.tolist()[:8] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert torch.equal(a.second, b.second) and torch.equal(a.shifts, b.shifts)
    assert not (torch.equal(a.second, c.second) and torch.equal(a.shifts, c.shifts))
    xa, ya, _ = a.batch(0, 120)
    xb, yb, _ = b.batch(0, 120)
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and (ya[:, 0] != ya[:, 1]).all()
    small = MultiMNISTPairs(digits, labels, partners=2, seed=0, n_digits=5)
    assert len(small) == 10 and small.n_digits == 5


def test_two_label_loss_hand_computed():
    lengths = torch.tensor([[0.8, 0.3, 0.05]])
    labels2 = torch.tensor([[0, 1]])
    recs = torch.stack([torch.full((1, 1, 4, 4), 0.5), torch.full((1, 1, 4, 4), 0.2)], dim=1)
    parts = torch.stack([torch.full((1, 1, 4, 4), 0.3), torch.zeros(1, 1, 4, 4)], dim=1)
    total, margin, recon = two_label_loss(lengths, recs, parts, labels2, recon_weight=0.196)
    # margin: (0.9-0.8)^2 + (0.9-0.3)^2 + 0.5*max(0, 0.05-0.1)^2 = 0.01 + 0.36 + 0 = 0.37
    # recon: (0.5-0.3)^2 + (0.2-0)^2 = 0.04 + 0.04
    assert margin.item() == pytest.approx(0.37)
    assert recon.item() == pytest.approx(0.08)
    assert total.item() == pytest.approx(0.37 + 0.196 * 0.08)
    # swapping which reconstruction goes with which digit changes the loss
    swapped = two_label_loss(lengths, recs.flip(1), parts, labels2)[2]
    assert swapped.item() == pytest.approx((0.2 - 0.3) ** 2 + 0.5 ** 2)


def test_each_reconstruction_is_masked_by_its_own_label():
    from effcn.models import create_model
    model = create_model("efficient_capsnet_tiny", image_size=36).eval()
    x = torch.rand(3, 1, 36, 36)
    labels2 = torch.tensor([[1, 2], [3, 4], [9, 0]])
    lengths, recs = two_label_forward(model, x, labels2)
    capsules = model.encode(x)
    assert recs.shape == (3, 2, 1, 36, 36)
    for k in range(2):
        torch.testing.assert_close(recs[:, k], model.reconstruct(capsules, labels2[:, k]))
    _, recs_pred = two_label_forward(model, x, None)  # inference: the two longest capsules
    top2 = lengths.topk(2, dim=1).indices
    torch.testing.assert_close(recs_pred[:, 1], model.reconstruct(capsules, top2[:, 1]))


def test_two_digit_accuracy_on_crafted_predictions():
    lengths = torch.tensor([
        [0.9, 0.8, 0.1, 0.0],   # top two {0, 1}; truth {1, 0} -> 1
        [0.9, 0.1, 0.8, 0.0],   # top two {0, 2}; truth {0, 1} -> 0.5
        [0.1, 0.2, 0.8, 0.9],   # top two {3, 2}; truth {0, 1} -> 0
        [0.7, 0.1, 0.2, 0.6],   # top two {0, 3}; truth {3, 2} -> 0.5
    ])
    truth = torch.tensor([[1, 0], [0, 1], [0, 1], [3, 2]])
    assert two_digit_found(lengths, truth).mean(1).tolist() == [1.0, 0.5, 0.0, 0.5]
    assert two_digit_accuracy(lengths, truth) == pytest.approx(0.5)


def test_train_and_eval_end_to_end(synthetic_root, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    from helpers import quick_overrides
    from effcn.cli import main
    monkeypatch.setattr(MultiMNIST, "sha256", {})
    overrides = [o for o in quick_overrides(synthetic_root, tmp_path / "runs", epochs=1, name="mm")
                 if not o.startswith("data.dataset")]
    overrides += ["data.dataset=multimnist", "model.args.image_size=36", "data.train_subset=64",
                  "model.args.primary_kernel=13", "task.args.partners=2",
                  "task.args.test_digits=30"]
    config = str(Path(__file__).parents[1] / "configs" / "multimnist_cpu.yaml")
    assert main(["train", "--config", config] + [a for o in overrides for a in ("--set", o)]) == 0
    run = tmp_path / "runs" / "mm"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_images"] == 60 and summary["test_partners"] == 2
    assert summary["test_metric"] == "two-digit accuracy" and 0 <= summary["test_acc"] <= 1
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "two-digit accuracy" in out and "60 pairs" in out
    report = json.loads((run / "eval" / "test_best.json").read_text())
    assert report["acc"] == pytest.approx(summary["test_acc"])  # same fixed pairs, same number
    assert (run / "figures" / "overlap_test.png").stat().st_size > 1000
    # an augmentation would be silently ignored: refused with one sentence instead
    bad = [o.replace("run.name=mm", "run.name=mm2") for o in overrides] + ["data.augment=paper"]
    assert main(["train", "--config", config] + [a for o in bad for a in ("--set", o)]) == 2
    assert "set data.augment=none" in capsys.readouterr().err
