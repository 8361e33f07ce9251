"""Import of the authors' Keras .h5 weights: layout, shape checks, refusal, numerical agreement.

The tests write .h5 files with the same groups, weight_names and shapes as the authors'
efficient_capsnet_SMALLNORB.h5 (random values), import them, and compare the effcn model with a
NumPy forward written in Keras' own layouts (NHWC activations, HWIO kernels) that follows the
authors' TensorFlow code line by line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

h5py = pytest.importorskip("h5py")

from effcn.cli import main  # noqa: E402
from effcn.errors import CheckpointError  # noqa: E402
from effcn.models.keras_import import import_keras_weights  # noqa: E402
from effcn.training.checkpoint import model_from_checkpoint  # noqa: E402

from helpers import (SMALLNORB_H5_CAPSNET as CAPSNET,  # noqa: E402
                     SMALLNORB_H5_GENERATOR as GENERATOR, write_keras_h5)

_REPO = Path(__file__).resolve().parents[1]
# ../shared/data from the project root; a worktree under wt/ has it one level further up.
REAL_H5 = next((p for p in (_REPO.parent / "shared", _REPO.parent.parent / "shared")
                if (p / "data" / "weights").is_dir()), _REPO.parent / "shared") / "data" / \
    "weights" / "efficient_capsnet_SMALLNORB.h5"

# ------------------------------------------------ a NumPy forward in Keras' layouts
def conv_nhwc(x, kernel, bias, stride=1, groups=1):
    """'valid' Conv2D: x (B, H, W, Cin), kernel HWIO (kh, kw, Cin/groups, Cout)."""
    kh, kw, cin_g, cout = kernel.shape
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
    # win: (B, Ho, Wo, Cin, kh, kw)
    if groups == 1:
        return np.einsum("bhwcij,ijco->bhwo", win, kernel) + bias
    assert cin_g == 1 and groups == cout == x.shape[-1]
    return np.einsum("bhwcij,ijc->bhwc", win, kernel[:, :, 0, :]) + bias


def leaky(x, slope):
    return np.where(x > 0, x, slope * x)


def instance_norm(x, gamma, beta, eps=1e-3):
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = x.var(axis=(1, 2), keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def squash(s, eps=1e-20):
    n = np.linalg.norm(s, axis=-1, keepdims=True)
    return (1 - 1 / (np.exp(n) + eps)) * (s / (n + eps))


def upsample2_bilinear(x):
    """Keras UpSampling2D(2, 'bilinear') = tf.image.resize with half-pixel centres."""
    def axis_weights(n):
        src = np.clip((np.arange(2 * n) + 0.5) / 2 - 0.5, 0, n - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        return lo, hi, src - lo
    lo, hi, t = axis_weights(x.shape[1])
    x = x[:, lo] * (1 - t)[None, :, None, None] + x[:, hi] * t[None, :, None, None]
    lo, hi, t = axis_weights(x.shape[2])
    return x[:, :, lo] * (1 - t)[None, None, :, None] + x[:, :, hi] * t[None, None, :, None]


def keras_capsnet_numpy(w, x_nhwc):
    """The authors' efficient_capsnet_graph (smallNORB) in NumPy: -> digit caps (B, 5, 16)."""
    x = x_nhwc
    for conv, norm, stride in (("conv2d_4", "instance_normalization", 2),
                               ("conv2d_5", "instance_normalization_1", 1),
                               ("conv2d_6", "instance_normalization_2", 1),
                               ("conv2d_7", "instance_normalization_3", 2)):
        x = conv_nhwc(x, w[f"{conv}/kernel"], w[f"{conv}/bias"], stride)
        x = leaky(x, 0.3)  # Keras LeakyReLU() default alpha
        x = instance_norm(x, w[f"{norm}/gamma"], w[f"{norm}/beta"])
    x = conv_nhwc(x, w["conv2d_8/kernel"], w["conv2d_8/bias"], groups=128)
    u_in = squash(x.reshape(len(x), 16, 8))
    W, b = w["digit_caps/W"], w["digit_caps/b"]
    u = np.einsum("...ji,kjiz->...kjz", u_in, W)
    c = np.einsum("...ij,...kj->...i", u, u)[..., None] / np.sqrt(16.0)
    c = np.exp(c - c.max(axis=1, keepdims=True))
    c = c / c.sum(axis=1, keepdims=True) + b
    return squash((u * c).sum(axis=-2))


def keras_generator_numpy(w, masked):
    """The authors' generator_graph in NumPy: masked (B, 80) -> image NHWC (B, 48, 48, 2)."""
    x = (masked @ w["dense/kernel"] + w["dense/bias"]).reshape(-1, 8, 8, 1)
    for conv in ("conv2d", "conv2d_1", "conv2d_2"):
        x = leaky(conv_nhwc(upsample2_bilinear(x), w[f"{conv}/kernel"], w[f"{conv}/bias"]), 0.2)
    x = conv_nhwc(x, w["conv2d_3/kernel"], w["conv2d_3/bias"])
    return 1 / (1 + np.exp(-x))


# ------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keras") / "weights.h5"
    return path, write_keras_h5(path)


def test_every_tensor_is_mapped_with_the_right_layout(keras_file):
    path, w = keras_file
    model, mapping = import_keras_weights(path, "smallnorb")
    assert len(mapping) == len(CAPSNET) + len(GENERATOR) == 30
    assert set(mapping) == {n for n, _ in model.named_parameters()}
    sd = model.state_dict()
    np.testing.assert_array_equal(sd["stem.0.weight"].numpy(),
                                  w["conv2d_4/kernel"].transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(sd["primary.conv.weight"][5, 0].numpy(),
                                  w["conv2d_8/kernel"][:, :, 0, 5])
    np.testing.assert_array_equal(sd["digit_caps.b"].numpy(), w["digit_caps/b"][..., 0])
    np.testing.assert_array_equal(sd["decoder.dense.weight"].numpy(), w["dense/kernel"].T)
    np.testing.assert_array_equal(sd["stem.11.weight"].numpy(), w["instance_normalization_3/gamma"])


def test_imported_model_matches_a_numpy_keras_forward(keras_file):
    path, w = keras_file
    model, _ = import_keras_weights(path, "smallnorb")
    model.eval()
    rng = np.random.default_rng(1)
    x_nhwc = rng.normal(0, 1, (3, 48, 48, 2)).astype(np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy()))
    ref_caps = keras_capsnet_numpy({k: v.astype(np.float64) for k, v in w.items()},
                                   x_nhwc.astype(np.float64))
    np.testing.assert_allclose(out.capsules.numpy(), ref_caps, rtol=1e-3, atol=1e-5)
    # decoder input: the longest capsule kept, flattened (B, 80)
    keep = np.linalg.norm(ref_caps, axis=-1).argmax(1)
    masked = (ref_caps * (np.arange(5)[None, :] == keep[:, None])[..., None]).reshape(3, 80)
    ref_img = keras_generator_numpy({k: v.astype(np.float64) for k, v in w.items()}, masked)
    np.testing.assert_allclose(out.reconstruction.numpy(), ref_img.transpose(0, 3, 1, 2),
                               rtol=1e-3, atol=1e-5)


def test_cli_writes_a_checkpoint_that_loads(keras_file, tmp_path, capsys):
    path, _ = keras_file
    out = tmp_path / "imported"
    assert main(["import-keras", str(path), "--preset", "smallnorb", "--out", str(out)]) == 0
    assert "mapped all 30 tensors" in capsys.readouterr().out
    model, state = model_from_checkpoint(out / "checkpoints" / "best.pt")
    ref, _ = import_keras_weights(path, "smallnorb")
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name
    assert state["config"]["data"]["dataset"] == "smallnorb"
    assert state["class_names"] == ["animal", "human", "airplane", "truck", "car"]
    assert (out / "config.yaml").is_file()
    # a second import into the same folder is refused rather than overwriting
    assert main(["import-keras", str(path), "--out", str(out)]) == 2


@pytest.mark.parametrize("change, phrase", [
    (lambda c, g: (c[:-1], g), "holds 19 tensors but the smallnorb preset expects 20"),
    (lambda c, g: ([("conv2d_4", "kernel", (7, 7, 1, 32))] + c[1:], g), "has shape (7, 7, 1, 32)"),
    (lambda c, g: (c, [("dense", "kernel", (160, 64))] + g[1:]), "has shape (160, 64)"),
    (lambda c, g: ([c[0], c[1], ("batch_normalization", "gamma", (32,))] + c[3:], g),
     "is not the expected instance_normalization gamma"),
])
def test_mismatching_files_are_refused_in_one_sentence(tmp_path, change, phrase):
    capsnet, generator = change(list(CAPSNET), list(GENERATOR))
    path = tmp_path / "bad.h5"
    write_keras_h5(path, capsnet=capsnet, generator=generator)
    with pytest.raises(CheckpointError) as e:
        import_keras_weights(path, "smallnorb")
    assert phrase in str(e.value)
    assert str(e.value).count(". ") == 0 and str(e.value).endswith(".")


def test_not_hdf5_and_missing_file(tmp_path, capsys):
    bad = tmp_path / "x.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(CheckpointError, match="not a readable HDF5 file"):
        import_keras_weights(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        import_keras_weights(tmp_path / "missing.h5")
    assert main(["import-keras", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not REAL_H5.is_file(), reason="the authors' smallNORB .h5 is not here")
def test_real_authors_file_maps_every_tensor_and_matches_numpy():
    model, mapping = import_keras_weights(REAL_H5, "smallnorb")
    assert len(mapping) == 30
    with h5py.File(REAL_H5, "r") as f:
        w = {}
        for group in ("CapsNet", "Generator"):
            for n in f[group].attrs["weight_names"]:
                n = n.decode()
                w[n.split(":")[0]] = np.asarray(f[group][n], dtype=np.float64)
    model.eval()
    x = np.random.default_rng(2).normal(0, 1, (2, 48, 48, 2)).astype(np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(out.capsules.numpy(), keras_capsnet_numpy(w, x.astype(np.float64)),
                               rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("moving_stats_last", [True, False], ids=["nested-model", "flat"])
def test_mnist_preset_maps_batchnorm_and_the_fc_decoder(tmp_path, moving_stats_last):
    """The MNIST preset's layout (BatchNorm with moving statistics, Dense decoder). Keras saves
    a nested model (the authors' capsule network) trainable weights first, so the moving
    statistics of every BatchNorm come after digit_caps; a flat model keeps them in place."""
    caps, moving, cin = [], [], 1
    for i, (cout, k) in enumerate(((32, 5), (64, 3), (64, 3), (128, 3))):
        bn = "batch_normalization" + (f"_{i}" if i else "")
        caps += [(f"conv2d_{i}", "kernel", (k, k, cin, cout)), (f"conv2d_{i}", "bias", (cout,))]
        caps += [(bn, w, (cout,)) for w in ("gamma", "beta")]
        stats = [(bn, w, (cout,)) for w in ("moving_mean", "moving_variance")]
        if moving_stats_last:
            moving += stats
        else:
            caps += stats
        cin = cout
    caps += [("conv2d_4", "kernel", (9, 9, 1, 128)), ("conv2d_4", "bias", (128,)),
             ("digit_caps", "W", (10, 16, 8, 16)), ("digit_caps", "b", (10, 16, 1))] + moving
    gen = []
    for i, (a, b) in enumerate(((160, 512), (512, 1024), (1024, 784))):
        name = "dense" + (f"_{i}" if i else "")
        gen += [(name, "kernel", (a, b)), (name, "bias", (b,))]
    path = tmp_path / "mnist.h5"
    w = write_keras_h5(path, capsnet=caps, generator=gen)
    model, mapping = import_keras_weights(path, "mnist")
    assert len(mapping) == 34
    sd = model.state_dict()
    np.testing.assert_array_equal(sd["stem.2.running_var"].numpy(),
                                  w["batch_normalization/moving_variance"])
    np.testing.assert_array_equal(sd["stem.11.running_mean"].numpy(),
                                  w["batch_normalization_3/moving_mean"])
    np.testing.assert_array_equal(sd["stem.9.weight"].numpy(),
                                  w["conv2d_3/kernel"].transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(sd["decoder.net.4.weight"].numpy(), w["dense_2/kernel"].T)
    with pytest.raises(CheckpointError, match="holds 28 tensors but the smallnorb preset expects 20"):
        import_keras_weights(path, "smallnorb")


def _replace_dataset(path: Path, group: str, name: str, **create) -> None:
    """Swap one tensor of a weights file for a dataset made by h5py's create_dataset(**create)."""
    with h5py.File(path, "r+") as f:
        del f[group][name]
        f[group].create_dataset(name, **create)


def test_a_tensor_declaring_a_huge_shape_is_refused_before_it_is_read(tmp_path):
    import resource
    path = tmp_path / "huge.h5"
    write_keras_h5(path)
    size = path.stat().st_size
    # 10^6 x 10^6 x 8 x 16 float32 (512 PB) declared in a few bytes: its chunks are never written
    huge = (10**6, 10**6, 8, 16)
    _replace_dataset(path, "CapsNet", "digit_caps/W:0", shape=huge, dtype="f4",
                     chunks=(1, 1, 8, 16))
    assert path.stat().st_size < size + 100_000
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError) as e:
        import_keras_weights(path, "smallnorb")
    message = str(e.value)
    from effcn.models import create_model
    want = tuple(create_model("efficient_capsnet_smallnorb").digit_caps.W.shape)
    assert f"tensor CapsNet/digit_caps/W:0 has shape {huge} but digit_caps.W of the smallnorb " \
           f"preset is {want}" in message, message
    assert message.count(". ") == 0 and message.endswith(".")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mb < 200  # nothing of the declared size was allocated


def test_a_tensor_of_strings_is_refused_naming_it(tmp_path):
    path = tmp_path / "strings.h5"
    write_keras_h5(path)
    _replace_dataset(path, "CapsNet", "digit_caps/b:0", data=np.array([b"x"] * 5))
    with pytest.raises(CheckpointError, match="tensor CapsNet/digit_caps/b:0 holds .* values, not "
                                              "numbers, for digit_caps.b"):
        import_keras_weights(path, "smallnorb")
