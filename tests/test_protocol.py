"""data.protocol=authors: train on every training image, select the epoch on the TEST split,
and say "test-selected (authors' protocol)" in every output; the honest protocol is the default."""

from __future__ import annotations

import json

from effcn.cli import main
from effcn.training.config import Config
from effcn.training.splits import TEST_SELECTED

from helpers import quick_overrides, set_args


def test_the_authors_protocol_selects_on_test_and_says_so(synthetic_root, tmp_path, capsys):
    assert Config().data.protocol == "honest"
    overrides = quick_overrides(synthetic_root, tmp_path, epochs=2, name="authors") + [
        "data.protocol=authors"]
    assert main(["train", *set_args(overrides)]) == 0
    out = capsys.readouterr().out
    assert out.count(TEST_SELECTED) >= 2                         # start, final line, CLI JSON
    run = tmp_path / "authors"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["selection"] == TEST_SELECTED and summary["protocol"] == "authors"
    assert summary["train_images"] == 240 and summary["val_images"] == 80   # all; the test set
    assert summary["best_val_acc"] == summary["test_acc"]        # selected on the test itself
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
              if '"kind": "epoch"' in line]
    assert max(e["val_acc"] for e in epochs) == summary["test_acc"]
    assert main(["eval", str(run)]) == 0
    assert TEST_SELECTED in capsys.readouterr().out
    assert json.loads((run / "eval" / "test_best.json").read_text())["selection"] == TEST_SELECTED
    assert main(["runs", str(tmp_path)]) == 0
    assert "done (test-selected)" in capsys.readouterr().out
    assert main(["compare", str(run), "--no-timing"]) == 0
    assert "[test-selected]" in capsys.readouterr().out


def test_the_honest_protocol_is_labelled_as_such(tiny_run):
    assert tiny_run.summary["selection"] == "validation split"
    assert tiny_run.summary["train_images"] + tiny_run.summary["val_images"] == 240


def test_monitor_test_logs_test_every_epoch_without_selecting_on_it(synthetic_root, tmp_path):
    overrides = quick_overrides(synthetic_root, tmp_path, epochs=3, name="monitored") + [
        "train.monitor_test=true"]
    assert main(["train", *set_args(overrides)]) == 0
    run = tmp_path / "monitored"
    summary = json.loads((run / "summary.json").read_text())
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
              if '"kind": "epoch"' in line]
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and all("test_acc" in e for e in epochs)
    assert summary["selection"] == "validation split"            # selection is untouched
    best_val = max(epochs, key=lambda e: (e["val_acc"], -e["val_loss"]))
    assert summary["best_epoch"] == best_val["epoch"]
    assert summary["test_acc"] == best_val["test_acc"]           # the same weights, fp32 both
    best_test = max(epochs, key=lambda e: (e["test_acc"], -e["epoch"]))
    assert summary["test_selected_acc"] == best_test["test_acc"] >= summary["test_acc"]
    assert summary["test_selected_epoch"] == best_test["epoch"]
    assert TEST_SELECTED in summary["test_selected_note"]
