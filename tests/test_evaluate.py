"""Evaluation as a library: the summary's test figures and `effcn eval` are one computation."""

from __future__ import annotations

import json

import pytest
import torch

from effcn.cli import main
from effcn.errors import EffcnError
from effcn.models import create_model
from effcn.training.config_io import load_config
from effcn.training.evaluate import evaluate, evaluate_run
from effcn.training.rundir import RunDir
from effcn.training.tasks import ClassificationTask
from effcn.training.tasks.classification import ImageSet
from effcn.training.trainer import Trainer

from helpers import quick_overrides


@pytest.fixture(scope="module")
def bf16_run(synthetic_root, tmp_path_factory):
    """A tiny run trained under bf16 autocast (on any CPU), its test evaluated in fp32."""
    out = tmp_path_factory.mktemp("eval")
    config = load_config(None, quick_overrides(synthetic_root, out, epochs=1, name="bf16") +
                         ["train.amp=bf16"])
    return RunDir(Trainer(config, quiet=True).fit()["run_dir"])


def test_effcn_eval_equals_the_summary_to_the_image(bf16_run, capsys):
    summary_bytes = bf16_run.summary_path.read_bytes()
    summary = json.loads(summary_bytes)
    assert summary["precision"] == "bf16 autocast" and summary["test_precision"] == "fp32"
    assert main(["eval", str(bf16_run.path)]) == 0
    assert "fp32" in capsys.readouterr().out
    report = json.loads(bf16_run.eval_report_path("test", "best.pt").read_text())
    assert report["precision"] == "fp32" and report["images"] == summary["test_images"]
    assert report["acc"] == summary["test_acc"]
    assert report["loss"] == pytest.approx(summary["test_loss"], rel=1e-6)
    assert bf16_run.summary_path.read_bytes() == summary_bytes  # eval never rewrites it


def test_evaluate_run_is_the_library_behind_effcn_eval(bf16_run):
    report = evaluate_run(bf16_run.path, write=False)
    assert report["acc"] == bf16_run.summary()["test_acc"] and "report_path" not in report
    val = evaluate_run(bf16_run.path, split="val", amp="bf16")
    assert val["split"] == "val" and val["images"] == 40 and val["precision"] == "bf16 autocast"
    assert val["report_path"].endswith("eval/val_best.json")
    assert set(bf16_run.eval_reports()) >= {"val_best"}
    assert set(val["per_class_acc"]) <= {str(c) for c in range(10)}


def test_test_amp_switch_evaluates_the_final_test_in_bf16(synthetic_root, tmp_path):
    config = load_config(None, quick_overrides(synthetic_root, tmp_path, epochs=1, name="t") +
                         ["train.amp=off", "train.test_amp=bf16"])
    summary = Trainer(config, quiet=True).fit()
    assert summary["precision"] == "fp32" and summary["test_precision"] == "bf16 autocast"
    assert evaluate_run(tmp_path / "t", amp="bf16", write=False)["acc"] == summary["test_acc"]


def test_evaluate_counts_per_class_hits():
    torch.manual_seed(0)
    model = create_model("efficient_capsnet_tiny").eval()
    images = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(12) % 3
    r = evaluate(model, ClassificationTask(load_config()), ImageSet(images, labels),
                 batch_size=5, predictions=True)
    pred = r["predictions"]
    assert r["acc"] == pytest.approx(float((pred == labels).float().mean()))
    for c in range(3):
        assert r["per_class_acc"][str(c)] == pytest.approx(
            float((pred[labels == c] == c).float().mean()))
    assert r["images"] == 12 and r["lengths"].shape == (12, 10)


def test_not_a_run_directory_is_the_one_clear_error(tmp_path):
    with pytest.raises(EffcnError, match="is not an effcn run directory"):
        RunDir.open(tmp_path)
    with pytest.raises(EffcnError, match="does not exist"):
        evaluate_run(tmp_path / "nope")
