"""effcn against the authors' own TensorFlow code, without TensorFlow.

The fixtures in tests/fixtures/authors/ were written by reference/authors_reference/make_fixtures.py,
which runs the authors' code (EscVM/Efficient-CapsNet at 4b337f5) on seeded inputs with weights
rounded to float16 (so the stored arrays are exact): their outputs, losses, gradients, one step
of their compiled Adam, their initialisers' statistics and their MultiMNIST pair builders. Their
README says what every array is.
"""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest
import torch

from effcn.capsules import reconstruction_loss
from effcn.models import create_model
from effcn.models.keras_import import PRESETS, import_keras_weights, load_keras_arrays
from effcn.training.config_io import load_config
from effcn.training.optim import build_optimizer
from effcn.training.tasks.classification import classification_loss_parts
from effcn.training.tasks.multimnist import two_label_loss

from helpers import REPO

FIXTURES = REPO / "tests" / "fixtures" / "authors"
PRESET_OF = {"mnist": "mnist", "multimnist": "multimnist", "smallnorb": "smallnorb"}
KERAS_NAME = {"mnist": "MNIST", "multimnist": "MULTIMNIST", "smallnorb": "SMALLNORB"}


def reference(name: str) -> dict:
    return dict(np.load(FIXTURES / f"{name}_reference.npz"))


def authors_model(name: str) -> torch.nn.Module:
    """The preset with the fixture's (float16-exact) weights, loaded as the importer loads them."""
    model = create_model(PRESETS[name][0])
    load_keras_arrays(model, keras_arrays(name), f"{name}_weights.npz", name)
    return model


def keras_arrays(name: str) -> list:
    """[(Keras weight name, array)] in the order of their model.weights (``_names``)."""
    weights = np.load(FIXTURES / f"{name}_weights.npz")
    return [(str(n), weights[str(n).split(":")[0]]) for n in weights["_names"]]


def nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


def forward(name: str, model, ref: dict, primary: bool = True):
    """effcn's outputs on the fixture's batch, decoder masked by the true label(s), and (a
    second pass through the stem, which in training mode moves BatchNorm's statistics again)
    the primary capsules."""
    x = nchw(ref["x"])
    if name == "multimnist":
        labels = torch.stack([torch.from_numpy(ref["y1"]).argmax(1),
                              torch.from_numpy(ref["y2"]).argmax(1)], dim=1)
    else:
        labels = torch.from_numpy(ref["y"]).argmax(1)
    out = model(x, labels)
    return x, labels, out, model.primary(model.stem(x)) if primary else None


@pytest.mark.parametrize("name", ["mnist", "multimnist", "smallnorb"])
@pytest.mark.parametrize("mode", ["infer", "train"])
def test_forward_matches_the_authors_model(name, mode):
    ref = reference(name)
    if mode == "train" and name == "smallnorb":
        assert bool(ref["train_equals_infer"])  # InstanceNorm: no training mode
        mode_ref = "infer"
    else:
        mode_ref = mode
    model = authors_model(name).train(mode == "train")
    with torch.no_grad():
        _, _, out, primary = forward(name, model, ref)
    np.testing.assert_allclose(primary.numpy(), ref[f"{mode_ref}_primary_caps"], atol=1e-6)
    np.testing.assert_allclose(out.capsules.numpy(), ref[f"{mode_ref}_digit_caps"], atol=1e-6)
    np.testing.assert_allclose(out.lengths.numpy(), ref[f"{mode_ref}_lengths"], atol=1e-6)
    if name == "multimnist":
        for k in (1, 2):
            np.testing.assert_allclose(nhwc(out.reconstruction[:, k - 1]),
                                       ref[f"{mode_ref}_recon{k}_true_mask"], atol=1e-5)
    else:
        np.testing.assert_allclose(nhwc(out.reconstruction), ref[f"{mode_ref}_recon_true_mask"],
                                   atol=1e-5)


@pytest.mark.parametrize("name", ["mnist", "multimnist", "smallnorb"])
def test_forward_matches_with_capsules_of_trained_lengths(name):
    """At initialisation the capsules are ~0.01 long, which leaves the squash, the routing
    softmax and the margin loss's m- term nearly idle; the fixtures' "scaled" set multiplies the
    primary kernel and fc_caps/W (scaled_factors) to give lengths of 0.2-0.99."""
    ref = reference(name)
    primary_factor, w_factor = ref["scaled_factors"]
    model = authors_model(name).eval()
    with torch.no_grad():
        model.primary.conv.weight.mul_(float(primary_factor))
        model.digit_caps.W.mul_(float(w_factor))
        _, _, out, primary = forward(name, model, ref)
    assert out.lengths.max() > 0.2
    np.testing.assert_allclose(primary.numpy(), ref["scaled_infer_primary_caps"], atol=1e-5)
    np.testing.assert_allclose(out.capsules.numpy(), ref["scaled_infer_digit_caps"], atol=1e-5)
    np.testing.assert_allclose(out.lengths.numpy(), ref["scaled_infer_lengths"], atol=1e-5)
    rec = (out.reconstruction[:, 0] if name == "multimnist" else out.reconstruction)
    key = "scaled_infer_recon1_true_mask" if name == "multimnist" else "scaled_infer_recon_true_mask"
    np.testing.assert_allclose(nhwc(rec), ref[key], atol=1e-5)


@pytest.mark.parametrize("name", ["mnist", "multimnist", "smallnorb"])
def test_losses_match_the_authors_compiled_losses(name):
    ref = reference(name)
    model = authors_model(name).train()
    with torch.no_grad():
        x, labels, out, _ = forward(name, model, ref, primary=False)
        if name == "multimnist":
            parts = torch.stack([nchw(ref["base"]), nchw(ref["top"])], dim=1)
            total, margin, _ = two_label_loss(out.lengths, out.reconstruction, parts, labels)
            recons = [reconstruction_loss(out.reconstruction[:, k], parts[:, k]) for k in (0, 1)]
            for k in (1, 2):
                assert recons[k - 1].item() == pytest.approx(float(ref[f"train_loss_recon{k}"]),
                                                             rel=1e-5, abs=1e-7)
        else:
            total, margin, recon = classification_loss_parts(model, out, x, labels, 0.392)
            assert recon.item() == pytest.approx(float(ref["train_loss_recon"]), rel=1e-5)
    assert margin.item() == pytest.approx(float(ref["train_loss_margin"]), rel=1e-5, abs=1e-7)
    assert total.item() == pytest.approx(float(ref["train_loss_total"]), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name", ["mnist", "multimnist", "smallnorb"])
def test_one_adam_step_matches_the_authors_optimizer(name):
    """Gradients of their compiled loss, then one step of their Keras Adam (epsilon placed as
    Keras does, effcn's default): the same weights afterwards, BatchNorm statistics included."""
    ref = reference(name)
    model = authors_model(name).train()
    config = load_config(None, ["optim.fused=false"])
    lr, b1, b2, eps = ref["step/lr_beta1_beta2_epsilon"]
    assert (config.optim.lr, *config.optim.betas, config.optim.eps) == pytest.approx((lr, b1, b2, eps))
    optimizer = build_optimizer(config, model.parameters())
    x, labels, out, _ = forward(name, model, ref, primary=False)
    if name == "multimnist":
        parts = torch.stack([nchw(ref["base"]), nchw(ref["top"])], dim=1)
        loss = two_label_loss(out.lengths, out.reconstruction, parts, labels)[0]
    else:
        loss = classification_loss_parts(model, out, x, labels, 0.392)[0]
    assert loss.item() == pytest.approx(float(ref["tape_loss_total"]), rel=1e-5)
    loss.backward()
    mapping = {keras: ours for ours, keras in _mapping(name, model).items()}
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    for keras in ref["step/names"]:
        key = str(keras).split(":")[0]
        ours = mapping[key]
        convert = _to_keras(ours)
        if f"step/grad/{key}" in ref:
            grad = convert(params[ours].grad)
            scale = np.abs(ref[f"step/grad/{key}"]).max() + 1e-12
            assert np.abs(grad - ref[f"step/grad/{key}"]).max() <= 1e-4 * scale, key
    optimizer.step()
    for keras in ref["step/names"]:
        key = str(keras).split(":")[0]
        ours = mapping[key]
        value = params[ours] if ours in params else buffers[ours]
        # Adam moves every weight by up to lr (5e-4) in this first step, whatever the size of
        # its gradient: a weight whose gradient is near epsilon can move 1e-6 apart from float
        # rounding of that gradient, so the step is compared to 1% of lr.
        np.testing.assert_allclose(_to_keras(ours)(value), ref[f"step/after/{key}"],
                                   atol=0.01 * lr, rtol=1e-5, err_msg=key)
        moved = np.abs(ref[f"step/after/{key}"] - _to_keras(ours)(value)).max()
        assert moved <= 0.01 * lr, key


def _mapping(name, model):
    fresh = create_model(PRESETS[name][0])
    return {ours: keras.split(":")[0] for ours, keras in
            load_keras_arrays(fresh, keras_arrays(name), name, name).items()}


def _to_keras(ours: str):
    """effcn tensor -> the Keras layout of the fixture (conv OIHW -> HWIO, dense (out, in) ->
    (in, out), capsule bias (n_out, n_in) -> (n_out, n_in, 1))."""
    def convert(t):
        a = t.detach().numpy()
        if a.ndim == 4 and not ours.startswith("digit_caps"):
            return a.transpose(2, 3, 1, 0)
        if a.ndim == 2 and ours.startswith("decoder"):
            return a.T
        if ours == "digit_caps.b":
            return a[..., None]
        return a
    return convert


@pytest.mark.parametrize("name", ["mnist", "smallnorb"])
def test_import_keras_reads_files_saved_by_the_authors_current_code(name, tmp_path, capsys):
    """Their current code names the capsule layer fc_caps and the primary conv
    primary_caps/conv2d; effcn import-keras reads it and gives their outputs."""
    h5 = tmp_path / f"{name}.h5"
    with gzip.open(FIXTURES / f"{name}_weights.h5.gz") as src, open(h5, "wb") as dst:
        shutil.copyfileobj(src, dst)
    model, mapping = import_keras_weights(h5, name)
    assert "digit_caps.W" in mapping and mapping["digit_caps.W"].startswith("fc_caps/W")
    ref = reference(name)
    with torch.no_grad():
        out = model.eval()(nchw(ref["x"]))
    np.testing.assert_allclose(out.lengths.numpy(), ref["infer_lengths"], atol=1e-6)
    from effcn.cli import main
    assert main(["import-keras", str(h5), "--preset", name, "--out", str(tmp_path / "run")]) == 0
    assert "fc_caps/W" in capsys.readouterr().out


def test_initialisers_match_the_authors_statistics():
    stats = json.loads((FIXTURES / "init_stats.json").read_text())["models"]
    for name in ("mnist", "smallnorb"):
        torch.manual_seed(0)
        model = create_model(PRESETS[name][0])
        ours = {keras: p for p, keras in
                ((dict(model.named_parameters()).get(o), k) for o, k in
                 _mapping(name, create_model(PRESETS[name][0])).items()) if p is not None}
        for key, entry in stats[KERAS_NAME[name]].items():
            if key not in ours or not entry.get("trainable", True):
                continue
            theirs = entry["mean_over_seeds"]
            t = ours[key].detach().double()
            if theirs["std"] == 0:
                assert torch.all(t == theirs["mean"]), key
                continue
            assert t.std().item() == pytest.approx(theirs["std"], rel=0.15), key
            assert t.min().item() >= theirs["min"] * 1.2 - 1e-9 and \
                t.max().item() <= theirs["max"] * 1.2 + 1e-9, key


def test_multimnist_pairs_follow_the_authors_builders():
    stats = json.loads((FIXTURES / "multimnist_pair_stats.json").read_text())
    setup = json.loads((FIXTURES / "training_setup.json").read_text())
    assert stats["train"]["same_label_target_is_2_at_that_class"]
    assert stats["test"]["base_keeps_one_shift_for_all_partners"]
    assert stats["test"]["partners_without_replacement"]
    assert stats["test"]["partners_always_of_another_class"]
    config = load_config(REPO / "configs" / "multimnist.yaml")
    steps = setup["MULTIMNIST"].get("steps_per_epoch") or \
        setup["MULTIMNIST"]["fit_kwargs"].get("steps_per_epoch")
    assert config.task.args["epoch_pairs"] == steps * config.train.batch_size
    # effcn's training partners: the same share of same-label pairs on real-like labels
    from effcn.data.multimnist import AnyOtherImage
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (5000,), generator=g)
    idx = torch.randint(0, 5000, (20000,), generator=g)
    same = (labels[AnyOtherImage(5000)(idx, g)] == labels[idx]).double().mean().item()
    assert same == pytest.approx(stats["train"]["fraction_same_label"], abs=0.01)


def test_pytorch_epsilon_placement_would_not_match_their_step():
    """The check above can fail: with PyTorch's constant epsilon the first step moves the
    weights with small gradients measurably differently from their Keras Adam."""
    ref = reference("mnist")
    model = authors_model("mnist").train()
    optimizer = build_optimizer(load_config(None, ["optim.fused=false",
                                                   "optim.eps_placement=pytorch"]),
                                model.parameters())
    x, labels, out, _ = forward("mnist", model, ref, primary=False)
    classification_loss_parts(model, out, x, labels, 0.392)[0].backward()
    optimizer.step()
    kernel = model.primary.conv.weight.detach().numpy().transpose(2, 3, 1, 0)
    lr = float(ref["step/lr_beta1_beta2_epsilon"][0])
    assert np.abs(kernel - ref["step/after/primary_caps/conv2d/kernel"]).max() > 0.05 * lr


@pytest.mark.parametrize("preset", ["multimnist", "smallnorb"])
def test_a_current_code_file_of_another_preset_is_refused_in_one_sentence(preset, tmp_path):
    from effcn.errors import CheckpointError
    h5 = tmp_path / "mnist.h5"
    with gzip.open(FIXTURES / "mnist_weights.h5.gz") as src, open(h5, "wb") as dst:
        shutil.copyfileobj(src, dst)
    with pytest.raises(CheckpointError) as info:
        import_keras_weights(h5, preset)
    message = str(info.value)
    assert "\n" not in message and ("use the preset" in message or "another model" in message)
