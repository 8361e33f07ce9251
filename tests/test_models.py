"""The models' own properties: the paper's parameter count, decoder masking and conditioning,
options, errors, optional imports (every registered model's forward and backward:
test_registries.py)."""

import pytest
import torch

import effcn
from effcn.errors import ConfigError
from effcn.models import create_model
from effcn.models.efficient_capsnet import count_parameters


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
    from effcn.models.efficient_capsnet import ClassEmbeddingDecoder
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
