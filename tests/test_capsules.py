"""Capsule building blocks against their definitions and hand-computed values."""

import math

import pytest
import torch

from effcn.capsules import (SelfAttentionRouting, margin_loss, mask_capsules,
                            reconstruction_loss, squash, squash_hinton)


def test_squash_length_direction_and_zero():
    s = torch.randn(64, 10, 16) * torch.logspace(-3, 1, 64).view(64, 1, 1)
    v = squash(s)
    norm_s, norm_v = s.norm(dim=-1), v.norm(dim=-1)
    assert torch.allclose(norm_v, 1 - torch.exp(-norm_s), atol=1e-6)
    assert (norm_v <= 1 + 1e-6).all()
    cos = torch.nn.functional.cosine_similarity(s, v, dim=-1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)
    z = torch.zeros(3, 4, requires_grad=True)
    out = squash(z)
    assert torch.equal(out, torch.zeros(3, 4))
    out.sum().backward()
    assert torch.isfinite(z.grad).all()


def test_squash_hinton_length():
    s = torch.randn(100, 8)
    n = s.norm(dim=-1)
    assert torch.allclose(squash_hinton(s).norm(dim=-1), n ** 2 / (1 + n ** 2), atol=1e-5)


def test_routing_coefficients_sum_to_one_over_output_capsules():
    layer = SelfAttentionRouting(n_in=16, d_in=8, n_out=10, d_out=16)
    v, c, a = layer(torch.randn(5, 16, 8), return_routing=True)
    assert v.shape == (5, 10, 16) and c.shape == (5, 10, 16) and a.shape == (5, 10, 16)
    assert torch.allclose(c.sum(dim=1), torch.ones(5, 16), atol=1e-6)
    assert not torch.allclose(c.sum(dim=2), torch.ones(5, 10))  # not over the inputs


def test_routing_hand_computed_example():
    # u1 = [1, 0], u2 = [0, 1]; W[0, i] = I, W[1, i] = 2 I, b = 0, d_out = 2.
    layer = SelfAttentionRouting(n_in=2, d_in=2, n_out=2, d_out=2)
    with torch.no_grad():
        layer.W.copy_(torch.stack([torch.eye(2).expand(2, 2, 2), 2 * torch.eye(2).expand(2, 2, 2)]))
        layer.b.zero_()
    v, c, a = layer(torch.eye(2).unsqueeze(0), return_routing=True)
    # A[0, i] = <e_i, e1 + e2> / sqrt(2) = 1/sqrt(2);  A[1, i] = <2 e_i, 2 e1 + 2 e2> / sqrt(2) = 4/sqrt(2)
    assert torch.allclose(a[0], torch.tensor([[1, 1], [4, 4]]) / math.sqrt(2))
    c1 = 1 / (1 + math.exp(-3 / math.sqrt(2)))  # softmax over the two outputs
    assert torch.allclose(c[0], torch.tensor([[1 - c1, 1 - c1], [c1, c1]]), atol=1e-6)
    # s_0 = (1 - c1) [1, 1], s_1 = c1 [2, 2]; |v| = 1 - exp(-|s|)
    expected = [1 - math.exp(-(1 - c1) * math.sqrt(2)), 1 - math.exp(-c1 * 2 * math.sqrt(2))]
    assert torch.allclose(v[0].norm(dim=-1), torch.tensor(expected), atol=1e-6)
    assert expected[0] == pytest.approx(0.14049, abs=1e-4)
    assert expected[1] == pytest.approx(0.91999, abs=1e-4)


def test_routing_bias_is_zero_initialised_and_added_to_coupling():
    layer = SelfAttentionRouting(n_in=3, d_in=4, n_out=2, d_out=5)
    assert torch.equal(layer.b, torch.zeros(2, 3))
    u = torch.randn(1, 3, 4)
    v0 = layer(u)
    with torch.no_grad():
        layer.b.fill_(0.5)
    assert not torch.allclose(v0, layer(u))


def test_uniform_routing_ablation():
    layer = SelfAttentionRouting(n_in=16, d_in=8, n_out=10, d_out=16, uniform=True)
    _, c, _ = layer(torch.randn(2, 16, 8), return_routing=True)
    assert torch.allclose(c, torch.full_like(c, 0.1))


def test_margin_loss_hand_computed():
    lengths = torch.tensor([[0.95, 0.3, 0.05], [0.5, 0.2, 0.0]])
    labels = torch.tensor([0, 1])
    # sample 1: 0 + 0.5 * 0.2^2 + 0 = 0.02;  sample 2: 0.5 * 0.4^2 + 0.7^2 + 0 = 0.57
    assert margin_loss(lengths, labels).item() == pytest.approx((0.02 + 0.57) / 2)
    multi_hot = torch.tensor([[1, 1, 0], [0, 1, 0]])
    # two targets in sample 1: 0 + (0.9 - 0.3)^2 + 0 = 0.36
    assert margin_loss(lengths, multi_hot).item() == pytest.approx((0.36 + 0.57) / 2)


def test_masking_by_label_and_by_prediction():
    caps = torch.zeros(2, 3, 4)
    caps[0, 2] = 1.0   # longest: 2
    caps[0, 0] = 0.1
    caps[1, 1] = 0.5   # longest: 1
    by_label = mask_capsules(caps, torch.tensor([0, 2])).view(2, 3, 4)
    assert torch.equal(by_label[0, 0], caps[0, 0]) and by_label[0, 1:].abs().sum() == 0
    assert by_label[1].abs().sum() == 0  # the true capsule of sample 2 is empty
    by_pred = mask_capsules(caps).view(2, 3, 4)
    assert torch.equal(by_pred[0, 2], caps[0, 2]) and by_pred[0, :2].abs().sum() == 0
    assert torch.equal(by_pred[1, 1], caps[1, 1])


def test_reconstruction_loss_is_pixel_mean():
    a, b = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    b[0, 0, 0, 0] = 3
    assert reconstruction_loss(a, b).item() == pytest.approx((31 + 9) / 32)


def test_factorised_capsule_weights():
    full = SelfAttentionRouting(n_in=16, d_in=8, n_out=1000, d_out=16)
    low = SelfAttentionRouting(n_in=16, d_in=8, n_out=1000, d_out=16, rank=16)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(full) == 1000 * 16 * 8 * 16 + 1000 * 16
    assert count(low) == 16 * 8 * 16 + 1000 * 16 * 16 + 1000 * 16
    v, c, _ = low(torch.randn(2, 16, 8), return_routing=True)
    assert v.shape == (2, 1000, 16) and torch.allclose(c.sum(1), torch.ones(2, 16), atol=1e-5)
    # the factorised predictions are W_in[i] @ W_out[j] applied to u_i
    u = torch.randn(1, 16, 8)
    w = torch.einsum("idr,jre->jide", low.W_in, low.W_out)
    assert torch.allclose(low.predictions(u), torch.einsum("bid,jide->bjie", u, w), atol=1e-5)
    # both start with predictions of the same scale, so training starts the same way
    u = squash(torch.randn(256, 16, 8))
    ratio = low.predictions(u).std() / full.predictions(u).std()
    assert 0.7 < ratio < 1.4, ratio
