"""The baselines: routing-by-agreement, the original CapsNet, the CNN, and ``effcn compare``."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import quick_overrides
from effcn.capsules import DynamicRouting, margin_loss, squash_hinton
from effcn.cli import main
from effcn.tools.compare import format_table, inference_images_per_s, run_row
from effcn.errors import EffcnError
from effcn.models import create_model
from effcn.models import count_parameters
from effcn.training.tasks.classification import classification_loss_parts


# ----------------------------------------------------------------- routing-by-agreement
def reference_routing(u_hat: torch.Tensor, iterations: int):
    """Procedure 1 of Sabour et al. written with loops over capsules (slow, obvious)."""
    B, n_out, n_in, _ = u_hat.shape
    b = torch.zeros(B, n_out, n_in, dtype=u_hat.dtype)
    for r in range(iterations):
        c = torch.zeros_like(b)
        for i in range(n_in):
            c[:, :, i] = torch.softmax(b[:, :, i], dim=1)
        v = torch.stack([squash_hinton(sum(c[:, j, i:i + 1] * u_hat[:, j, i] for i in range(n_in)))
                         for j in range(n_out)], dim=1)
        if r < iterations - 1:
            for j in range(n_out):
                for i in range(n_in):
                    b[:, j, i] = b[:, j, i] + (u_hat[:, j, i] * v[:, j]).sum(-1)
    return v, c, b


@pytest.mark.parametrize("iterations", [1, 2, 3, 5])
def test_dynamic_routing_matches_loop_reference_and_sums_to_one(iterations):
    torch.manual_seed(0)
    layer = DynamicRouting(n_in=7, d_in=4, n_out=3, d_out=5, iterations=iterations).double()
    with torch.no_grad():
        layer.W.normal_(std=0.5)  # large enough that the coupling moves away from uniform
    u = torch.randn(2, 7, 4, dtype=torch.float64)
    v, c, logits = layer(u, return_routing=True)
    assert v.shape == (2, 3, 5) and c.shape == (2, 3, 7) and logits.shape == (2, 3, 7)
    assert torch.allclose(c.sum(dim=1), torch.ones(2, 7, dtype=torch.float64))
    ref_v, ref_c, ref_b = reference_routing(layer.predictions(u).detach(), iterations)
    assert torch.allclose(v, ref_v) and torch.allclose(c, ref_c) and torch.allclose(logits, ref_b)
    if iterations > 1:
        assert not torch.allclose(c, torch.full_like(c, 1 / 3), atol=1e-3)
    assert torch.equal(layer(u), v)


def test_one_iteration_is_uniform_coupling():
    # "Zero iterations" of agreement: the paper's r counts passes, so r = 1 makes no update and
    # the output is the squashed plain mean (times n_in / n_out) of the predictions.
    torch.manual_seed(0)
    layer = DynamicRouting(n_in=6, d_in=3, n_out=4, d_out=2, iterations=1)
    u = torch.randn(5, 6, 3)
    v, c, logits = layer(u, return_routing=True)
    assert torch.equal(c, torch.full_like(c, 0.25)) and torch.equal(logits, torch.zeros_like(logits))
    u_hat = layer.predictions(u)
    assert torch.allclose(v, squash_hinton(u_hat.sum(dim=2) / 4), atol=1e-6)
    with pytest.raises(ValueError, match="at least 1"):
        DynamicRouting(6, 3, 4, 2, iterations=0)


def test_dynamic_routing_hand_computed_two_capsules():
    # u1 = e1, u2 = e2; W[0, i] = I, W[1, i] = 2 I: u_hat[0, i] = e_i, u_hat[1, i] = 2 e_i.
    layer = DynamicRouting(n_in=2, d_in=2, n_out=2, d_out=2, iterations=2)
    with torch.no_grad():
        layer.W.copy_(torch.stack([torch.eye(2).expand(2, 2, 2), 2 * torch.eye(2).expand(2, 2, 2)]))
    v, c, logits = layer(torch.eye(2).unsqueeze(0), return_routing=True)
    # pass 1: c = 1/2; s_0 = (1/2, 1/2), |s_0|^2 = 1/2 -> |v_0| = 1/3; s_1 = (1, 1) -> |v_1| = 2/3,
    # both along (1, 1)/sqrt(2). Update: b[0, i] = <e_i, v_0> = 1/(3 sqrt 2); b[1, i] = 2 * 2/(3 sqrt 2).
    b0, b1 = 1 / (3 * math.sqrt(2)), 4 / (3 * math.sqrt(2))
    assert torch.allclose(logits[0], torch.tensor([[b0, b0], [b1, b1]]), atol=1e-6)
    c1 = 1 / (1 + math.exp(-(b1 - b0)))  # pass 2: softmax over the two outputs
    assert c1 == pytest.approx(0.66976, abs=1e-4)
    assert torch.allclose(c[0], torch.tensor([[1 - c1, 1 - c1], [c1, c1]]), atol=1e-6)
    # s_0 = (1 - c1)(1, 1), s_1 = 2 c1 (1, 1); |v| = |s|^2 / (1 + |s|^2)
    n0, n1 = 2 * (1 - c1) ** 2, 2 * (2 * c1) ** 2
    expected = torch.tensor([n0 / (1 + n0), n1 / (1 + n1)])
    assert torch.allclose(v[0].norm(dim=-1), expected, atol=1e-6)
    assert expected.tolist() == pytest.approx([0.17903, 0.78209], abs=1e-4)
    assert torch.allclose(v[0, 1], expected[1] * torch.ones(2) / math.sqrt(2), atol=1e-6)


# --------------------------------------------------------------------------- models
def test_capsnet_parameter_count_and_capsules():
    model = create_model("capsnet_mnist")
    # conv 1->256 9x9: 20,992; primary 256->256 9x9: 5,308,672; W 10x1152x8x16: 1,474,560
    assert count_parameters(model, include_decoder=False) == 6_804_224  # the paper's "6.8M"
    assert count_parameters(model) == 6_804_224 + 1_411_344            # and 8.2M with decoder
    assert model.config.num_primary_caps() == 1152 and model.digit_caps.iterations == 3
    assert model.has_capsules
    torch.manual_seed(0)
    out = model(torch.rand(2, 1, 28, 28), return_routing=True)
    assert out.capsules.shape == (2, 10, 16) and out.routing.shape == (2, 10, 1152)
    assert out.reconstruction.shape == (2, 1, 28, 28)
    primary = model.primary(model.conv(torch.rand(2, 1, 28, 28)))
    assert primary.shape == (2, 1152, 8) and (primary.norm(dim=-1) < 1).all()


def test_capsnet_routing_iterations_option():
    model = create_model("capsnet_tiny", routing_iterations=1)
    out = model(torch.rand(2, 1, 28, 28), return_routing=True)
    assert torch.allclose(out.routing, torch.full_like(out.routing, 0.1))
    with pytest.raises(EffcnError, match="routing_iterations"):
        create_model("capsnet_tiny", routing_iterations=0)


def test_cnn_parameter_count_scores_and_cross_entropy():
    model = create_model("cnn_baseline_mnist")
    # conv 1->16 5x5: 416; conv 16->32 5x5: 12,832; linear 32*7*7 -> 10: 15,690
    assert count_parameters(model) == 28_938 and not model.has_capsules
    torch.manual_seed(0)
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([3, 1, 4, 1])
    out = model(x, y)
    assert out.capsules is None and out.reconstruction is None and out.routing is None
    assert torch.allclose(out.lengths.sum(1), torch.ones(4))
    expected = F.cross_entropy(model.logits(x), y)
    assert torch.allclose(model.classification_loss(out, y), expected, atol=1e-6)
    total, part, recon = classification_loss_parts(model, out, x, y, 0.392)
    assert torch.allclose(total, expected, atol=1e-6) and recon == 0
    # without the model the trainer's default (margin loss) would apply: a different number
    assert not torch.allclose(classification_loss_parts(None, out, x, y, 0.392)[0], expected)


def test_cnn_margin_option_uses_sigmoid_scores():
    torch.manual_seed(0)
    model = create_model("cnn_baseline_tiny", loss="margin")
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([0, 1, 2])
    out = model(x)
    assert torch.allclose(out.lengths, torch.sigmoid(model.logits(x)))
    assert torch.allclose(model.classification_loss(out, y), margin_loss(out.lengths, y))


# ------------------------------------------------------------------ training + compare
@pytest.fixture(scope="module")
def two_runs(synthetic_root, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    for name in ("cnn_baseline_tiny", "capsnet_tiny"):
        sets = [*quick_overrides(synthetic_root, runs, epochs=2, name=name), f"model.name={name}"]
        assert main(["train", "--quiet", *[a for kv in sets for a in ("--set", kv)]]) == 0
    return runs / "cnn_baseline_tiny", runs / "capsnet_tiny"


def test_baselines_train_eval_and_predict(two_runs, tmp_path, capsys):
    cnn, caps = two_runs
    summary = json.loads((cnn / "summary.json").read_text())
    assert summary["model"] == "cnn_baseline_tiny" and summary["test_recon"] == 0
    assert summary["test_acc"] > 0.3  # learns the synthetic bars (chance is 0.1)
    assert main(["eval", str(caps)]) == 0
    report = json.loads((caps / "eval" / "test_best.json").read_text())
    assert report["acc"] == pytest.approx(json.loads((caps / "summary.json").read_text())["test_acc"])
    from PIL import Image
    img = tmp_path / "digit.png"
    Image.fromarray((torch.rand(28, 28) * 255).byte().numpy()).save(img)
    assert main(["predict", str(cnn), str(img), "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(row["lengths"]) == 10 and sum(row["lengths"]) == pytest.approx(1, abs=1e-3)
    assert main(["predict", str(cnn), str(img)]) == 0
    assert "(score " in capsys.readouterr().out  # the CNN has no capsule lengths


def test_compare_table_and_markdown(two_runs, tmp_path, capsys):
    cnn, caps = two_runs
    summary = json.loads((caps / "summary.json").read_text())
    (caps / "eval").mkdir(exist_ok=True)
    (caps / "eval" / "test_last.json").write_text(json.dumps({"affnist_acc": 0.5}))
    out_md = tmp_path / "table.md"
    assert main(["compare", str(cnn), str(caps), "--markdown", str(out_md), "--repeats", "2",
                 "--batch-size", "8"]) == 0
    text = capsys.readouterr().out
    assert "cnn_baseline_tiny" in text and "capsnet_tiny" in text and "inference img/s" in text
    md = out_md.read_text().splitlines()
    assert md[0].startswith("| run | model | parameters |") and len(md) >= 4
    cells = [c.strip() for c in md[3].strip("|").split("|")]
    assert cells[1] == "capsnet_tiny" and cells[2] == f"{summary['parameters']:,}"
    assert cells[5] == f"{summary['train_images']:,}"
    assert cells[9] == f"{100 * summary['test_acc']:.2f}%" and cells[10] == "50.00%"
    assert [c.strip() for c in md[2].strip("|").split("|")][10] == "—"  # CNN: no affNIST
    row = run_row(cnn, measure=False)
    assert row["epochs"] == 2 and row["train_s_per_epoch"] > 0 and row["inference_images_per_s"] is None


def test_inference_timing_is_positive_and_compare_errors(tmp_path, capsys):
    model = create_model("cnn_baseline_tiny")
    rate = inference_images_per_s(model, torch.device("cpu"), batch_size=4, repeats=2,
                                  min_seconds=0.01)
    assert rate > 0
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("model: {}\n")
    assert main(["compare", str(tmp_path / "half")]) == 2
    assert "training has not finished" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "nothing")]) == 2
    assert "not an effcn run directory" in capsys.readouterr().err
    assert "| run |" in format_table([{"run": "r"}], markdown=True)
