"""Ctrl-C during training: one line naming the epoch, the batch and the resume command, exit
status 130, and everything on disk whole (last.pt resumes to the uninterrupted run, bit-exact)."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from effcn.cli import main
from effcn.training.checkpoint import load_checkpoint
from effcn.training.metrics import read_metrics

from helpers import quick_overrides

# The child presses Ctrl-C on itself (a real SIGINT) from a batch callback once epoch 2 is part-way
# through, then exits through effcn's own command line.
_CTRL_C_MID_EPOCH = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started where SIGINT is ignored
import effcn.training.trainer as trainer
from effcn.cli import main
from effcn.training.callbacks import Callback

class CtrlC(Callback):
    def on_batches(self, trainer, records):
        if any(r["epoch"] == 2 and r["step"] == 2 for r in records):
            os.kill(os.getpid(), signal.SIGINT)

from_config = trainer.callbacks_from_config
trainer.callbacks_from_config = lambda config: from_config(config) + [CtrlC()]
sys.exit(main(sys.argv[1:]))
"""


def _train_args(overrides):
    return ["train", "--quiet", *(a for o in overrides for a in ("--set", o))]


def test_ctrl_c_says_where_it_stopped_and_resumes_exactly(synthetic_root, tmp_path, capsys):
    overrides = quick_overrides(synthetic_root, tmp_path, epochs=3, name="cut") + [
        "train.log_every=1"]
    proc = subprocess.run([sys.executable, "-c", _CTRL_C_MID_EPOCH, *_train_args(overrides)],
                          capture_output=True, text=True, timeout=300)
    run = tmp_path / "cut"
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.strip() == (
        f"effcn train: error: training interrupted in epoch 2/3 at batch 3/7; "
        f"checkpoints/last.pt holds epoch 1: continue with effcn train --resume {run}")
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    assert not (run / "summary.json").exists()

    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert main(_train_args(quick_overrides(synthetic_root, tmp_path, epochs=3, name="clean") +
                            ["train.log_every=1"])) == 0
    a, b = (load_checkpoint(tmp_path / n / "checkpoints" / "last.pt") for n in ("cut", "clean"))
    assert a["epoch"] == b["epoch"] == 3
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    ea, eb = (read_metrics(tmp_path / n / "metrics.jsonl", "epoch") for n in ("cut", "clean"))
    keys = ("train_loss", "val_loss", "val_acc")
    assert [[e[k] for k in keys] for e in ea] == [[e[k] for k in keys] for e in eb]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed"] and summary["test_acc"] == json.loads(
        (tmp_path / "clean" / "summary.json").read_text())["test_acc"]


def test_ctrl_c_before_any_epoch_says_there_is_nothing_to_resume(synthetic_root, tmp_path):
    overrides = quick_overrides(synthetic_root, tmp_path, epochs=2, name="early") + [
        "train.log_every=1"]
    script = _CTRL_C_MID_EPOCH.replace('r["epoch"] == 2 and r["step"] == 2',
                                       'r["epoch"] == 1 and r["step"] == 0')
    proc = subprocess.run([sys.executable, "-c", script, *_train_args(overrides)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == (
        "effcn train: error: training interrupted in epoch 1/2 at batch 1/7; no epoch had "
        "finished, so there is nothing to resume: start the run again.")
