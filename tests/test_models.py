"""The models' own properties: the paper's parameter count, decoder masking and conditioning,
options, errors, optional imports (every registered model's forward and backward:
test_registries.py)."""

import pytest
import torch

import effcn
from effcn.errors import ConfigError
from effcn.models import create_model, list_models
from effcn.models import count_parameters


def test_paper_parameter_count():
    model = effcn.create_model("efficient_capsnet_mnist")
    assert count_parameters(model, include_decoder=False) == 161_824
    # decoder 160 -> 512 -> 1024 -> 784
    assert count_parameters(model) - 161_824 == 160 * 512 + 512 + 512 * 1024 + 1024 + 1024 * 784 + 784


def test_decoder_input_uses_label_in_training_and_prediction_otherwise():
    torch.manual_seed(0)
    model = create_model("efficient_capsnet_tiny").eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        out = model(x)
        pred = out.lengths.argmax(1)
        other = (pred + 1) % 10
        assert torch.allclose(model(x, pred).reconstruction, out.reconstruction)
        assert not torch.allclose(model(x, other).reconstruction, out.reconstruction)


def test_embedding_conditioned_decoder_reads_one_capsule_and_its_class():
    from effcn.models.common import ClassEmbeddingDecoder
    torch.manual_seed(0)
    masked = create_model("efficient_capsnet_numbers2")
    model = create_model("efficient_capsnet_numbers2", decoder_conditioning="embedding").eval()
    assert isinstance(model.decoder, ClassEmbeddingDecoder)
    # The first layer takes 2 x 16 inputs instead of 100 x 16; the rest is unchanged.
    first = model.decoder.inner.net[0]
    assert first.in_features == 32 and masked.decoder.net[0].in_features == 1600
    assert (count_parameters(masked) - count_parameters(model)
            == (1600 - 32) * 512 - 100 * 16)
    assert count_parameters(masked, False) == count_parameters(model, False)
    x = torch.rand(4, 1, 28, 56)
    with torch.no_grad():
        out = model(x)
        pred = out.lengths.argmax(1)
        assert out.reconstruction.shape == x.shape
        assert torch.allclose(model(x, pred).reconstruction, out.reconstruction)
        # The same capsule vector under another class gives another image: the embedding
        # carries the class.
        capsules = out.capsules.clone()
        other = (pred + 1) % 100
        capsules[torch.arange(4), other] = capsules[torch.arange(4), pred]
        assert not torch.allclose(model.reconstruct(capsules, other), out.reconstruction)
    model.train()
    model(x, pred).reconstruction.mean().backward()
    used = model.decoder.embedding.weight.grad.abs().sum(1).nonzero().flatten()
    assert sorted(used.tolist()) == sorted(set(pred.tolist()))


def test_no_decoder_and_uniform_routing_options():
    model = create_model("efficient_capsnet_tiny", decoder="none", routing="uniform")
    assert model.decoder is None
    out = model(torch.rand(2, 1, 28, 28), return_routing=True)
    assert out.reconstruction is None
    assert torch.allclose(out.routing, torch.full_like(out.routing, 0.1))


def test_unknown_model_and_field_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown model 'efficient_capsnet_mnst'"):
        create_model("efficient_capsnet_mnst")
    with pytest.raises(ConfigError, match="no config field"):
        create_model("efficient_capsnet_mnist", num_clases=5)


def test_optional_dependencies_are_imported_only_where_used():
    """The core (models, data, trainer, CLI) imports none of the extras: a plain
    ``pip install effcn`` (torch + numpy) can train, and matplotlib, TensorBoard, scipy and h5py
    load only for the figure, TensorBoard, affNIST and Keras-import code that needs them."""
    import subprocess
    import sys
    code = ("import sys; import effcn, effcn.cli, effcn.training.trainer, effcn.training.callbacks, "
            "effcn.analysis, effcn.data, effcn.models.keras_import, effcn.tools.sweep, effcn.tools.bench; "
            "print(','.join(m for m in ('matplotlib', 'tensorboard', 'scipy', 'h5py', 'PIL') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


def test_list_models_filter_is_a_glob_pattern():
    every = list_models()
    capsnets = list_models("efficient_capsnet_*")
    assert capsnets == [n for n in every if n.startswith("efficient_capsnet_")] and capsnets
    assert list_models("*_tiny") == [n for n in every if n.endswith("_tiny")]
    assert list_models("no_such_*") == [] and list_models("") == every
    assert effcn.list_models("cnn_*") == [n for n in every if n.startswith("cnn_")]


def test_capsule_families_share_one_forward():
    from effcn.models import CapsuleClassifier
    from effcn.models.capsnet import CapsNet
    from effcn.models.cnn import BaselineCNN
    from effcn.models.efficient_capsnet import EfficientCapsNet
    assert issubclass(EfficientCapsNet, CapsuleClassifier) and issubclass(CapsNet, CapsuleClassifier)
    assert not issubclass(BaselineCNN, CapsuleClassifier)
    for cls in (EfficientCapsNet, CapsNet):
        assert all(m not in vars(cls) for m in ("encode", "reconstruct", "forward"))


@pytest.mark.parametrize("loss", ["cross_entropy", "margin"])
def test_cnn_returns_logits_and_scores_of_them(loss):
    import torch.nn.functional as F
    torch.manual_seed(0)
    model = create_model("cnn_baseline_tiny", loss=loss)
    x = torch.rand(5, 1, 28, 28)
    out = model(x)
    assert torch.equal(out.logits, model.logits(x))
    scores = torch.softmax(out.logits, 1) if loss == "cross_entropy" else torch.sigmoid(out.logits)
    assert torch.equal(out.lengths, scores)
    if loss == "cross_entropy":
        # the loss before logits were returned: -log of the clamped softmax probabilities
        y = torch.tensor([0, 1, 2, 3, 4])
        old = F.nll_loss(torch.log(out.lengths.clamp_min(torch.finfo(torch.float32).tiny)), y)
        assert torch.allclose(model.classification_loss(out, y), old, atol=1e-6)
        multi = torch.zeros(5, 10)
        multi[torch.arange(5), y] = 1
        multi[torch.arange(5), (y + 3) % 10] = 1
        old = -(multi / 2 * torch.log(out.lengths)).sum(1).mean()
        assert torch.allclose(model.classification_loss(out, multi), old, atol=1e-6)
    # capsule networks have no logits
    assert create_model("efficient_capsnet_tiny")(x).logits is None


@pytest.mark.parametrize("shape, kernel", [((28, 28), (9, 9)), ((32, 32), (11, 11)),
                                           ((40, 40), (15, 15)), ((64, 64), (27, 27)),
                                           ((28, 84), (9, 37))])
def test_primary_kernel_is_derived_from_the_input_size(shape, kernel):
    h, w = shape
    torch.manual_seed(0)
    model = create_model("efficient_capsnet_tiny", image_size=h, image_width=0 if h == w else w)
    assert model.primary.conv.kernel_size == kernel
    assert model.config.feature_map_shape() == kernel
    assert model.describe_primary() == (f"primary capsules: {kernel[0]}x{kernel[1]} depthwise "
                                        f"kernel for {h}x{w} input")
    x = torch.rand(2, 1, h, w)
    out = model(x, torch.tensor([1, 2]))
    assert model.primary_capsules(x).shape == (2, 4, 8)   # 32 stem channels / 8 dims
    assert out.capsules.shape == (2, 10, 16) and out.reconstruction.shape == (2, 1, h, w)
    (out.lengths.sum() + out.reconstruction.mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_describe_primary_in_model_descriptions():
    from effcn.models import describe_model
    assert describe_model("efficient_capsnet_cifar10").endswith(
        "; primary capsules: 11x11 depthwise kernel for 32x32 input")
    assert "9x23 depthwise kernel for 28x56 input" in describe_model("efficient_capsnet_numbers2")
    assert ("5x5 depthwise kernel for 36x36 input (set by primary_kernel=5, stride 2, on the 6x6 "
            "feature map)") in describe_model("efficient_capsnet_multimnist")
    assert "primary capsules" not in describe_model("cnn_baseline_mnist")


@pytest.mark.parametrize("name, size, smallest", [("efficient_capsnet_mnist", (10, 10), 11),
                                                  ("efficient_capsnet_mnist", (28, 8), 11),
                                                  ("efficient_capsnet_smallnorb", (22, 22), 23),
                                                  ("efficient_capsnet_multimnist", (20, 20), 29)])
def test_too_small_input_is_refused_naming_the_smallest_size(name, size, smallest):
    h, w = size
    with pytest.raises(ConfigError, match=f"{h}x{w} inputs are too small.* the smallest input "
                                          f"that works is {smallest}x{smallest}") as e:
        create_model(name, image_size=h, image_width=w if w != h else 0)
    assert str(e.value).count(". ") == 0 and str(e.value).endswith(".")
    with pytest.raises(ConfigError, match=f"smallest input that works is {smallest}x"):
        create_model(name, image_size=smallest - 1)
    # and the smallest size does work
    model = create_model(name, image_size=smallest, decoder="none")
    x = torch.rand(2, model.config.in_channels, smallest, smallest)
    assert model(x).capsules.shape[:2] == (2, model.config.num_classes)


def test_primary_outputs_that_do_not_split_into_capsules_are_a_config_error():
    with pytest.raises(ConfigError, match=r"128 primary outputs \(128 channels x 1x1\) do not "
                                          r"split into 5-D capsules"):
        create_model("efficient_capsnet_mnist", primary_dim=5)
