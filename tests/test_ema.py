"""train.ema_decay: the averaged weights are validated, selected, saved beside the raw weights,
tested, evaluated, and resumed exactly."""

from __future__ import annotations

import pytest
import torch

from effcn.errors import ConfigError
from effcn.models import create_model
from effcn.training.checkpoint import load_checkpoint, model_from_checkpoint
from effcn.training.config_io import load_config
from effcn.training.ema import EMA
from effcn.training.evaluate import evaluate_run
from effcn.training.rundir import RunDir
from effcn.training.trainer import Trainer

from helpers import quick_overrides


def test_ema_is_the_exponential_average_of_the_weights():
    torch.manual_seed(0)
    model = create_model("efficient_capsnet_tiny")
    ema = EMA(model, decay=0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        expected = [0.9 * e + 0.1 * p.detach() for e, p in zip(expected, model.parameters())]
    for e, p in zip(expected, ema.model.parameters()):
        torch.testing.assert_close(p, e)
    assert all(torch.equal(a, b) for a, b in zip(ema.model.buffers(), model.buffers()))
    assert not any(p.requires_grad for p in ema.model.parameters())


@pytest.fixture(scope="module")
def ema_run(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ema")
    config = load_config(None, quick_overrides(synthetic_root, out, epochs=3, name="ema") +
                         ["train.ema_decay=0.9", "train.amp=off"])
    return RunDir(Trainer(config, quiet=True).fit()["run_dir"])


def test_the_average_is_selected_tested_and_evaluated(ema_run):
    summary = ema_run.summary()
    assert summary["weights"] == "EMA (decay 0.9)"
    best = load_checkpoint(ema_run.best)
    assert set(best["ema"]) == set(best["model"])
    assert any(not torch.equal(best["ema"][k], best["model"][k]) for k in best["model"]
               if best["model"][k].is_floating_point())
    model, _ = model_from_checkpoint(ema_run.best)           # the weights evaluated: the EMA
    assert all(torch.equal(v, best["ema"][k]) for k, v in model.state_dict().items())
    assert evaluate_run(ema_run.path, write=False)["acc"] == summary["test_acc"]
    val = evaluate_run(ema_run.path, split="val", write=False)
    assert val["acc"] == pytest.approx(summary["best_val_acc"])  # selection was on the EMA


def test_resume_continues_the_average_exactly(ema_run, synthetic_root, tmp_path):
    overrides = quick_overrides(synthetic_root, tmp_path, epochs=1, name="cut") + [
        "train.ema_decay=0.9", "train.amp=off"]
    Trainer(load_config(None, overrides), quiet=True).fit()
    cut = RunDir(tmp_path / "cut")
    config = cut.load_config()
    config.train.epochs = 3
    Trainer(config, run_dir=cut.path, resume=True, quiet=True).fit()
    a, b = load_checkpoint(cut.last), load_checkpoint(ema_run.last)
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in b[key]), key


def test_resuming_with_ema_a_run_that_had_none_is_a_clear_error(synthetic_root, tmp_path):
    Trainer(load_config(None, quick_overrides(synthetic_root, tmp_path, epochs=1, name="raw")),
            quiet=True).fit()
    config = RunDir(tmp_path / "raw").load_config()
    config.train.ema_decay, config.train.epochs = 0.99, 2
    with pytest.raises(ConfigError, match="holds no averaged weights"):
        Trainer(config, run_dir=tmp_path / "raw", resume=True, quiet=True).fit()
    with pytest.raises(ConfigError, match="train.ema_decay must be in"):
        load_config(None, ["train.ema_decay=1"])
