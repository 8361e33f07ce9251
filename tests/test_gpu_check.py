"""benchmarks/gpu_check.sh runs end to end on the CPU with --smoke (on a GPU it runs for real):
every part, tiny, in seconds."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from gpu_check import validation_selected  # noqa: E402


def test_gpu_check_smoke(synthetic_root, tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--smoke",
                           "--data-root", str(synthetic_root), "--out", str(out),
                           "--runs", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    speed = report["speed"][0]
    assert report["smoke"] and speed["seconds_per_mnist_epoch"] > 0
    assert speed["dispatched_kernels_per_step"] > 0
    t = report["time_to_accuracy"]
    assert t["selection"] == "validation split" and t["epochs_run"] == 1  # the honest protocol
    assert "validation-selected test accuracy" in proc.stdout
    assert report["long_recipe"]["epochs"] == 1 and report["long_recipe"]["test_acc"] > 0
    sweep = report["sweep"]
    assert sweep["workers"] == 2 and "one_error" not in sweep and "side_by_side_error" not in sweep
    assert sweep["cost_of_n_vs_one"] > 0
    for peer in ("matthiasware", "akhdanfadh"):  # skipped here (no code or no torchvision)
        assert set(report["peers"][peer]) & {"skipped", "failed", "16", "4"}


def test_time_to_accuracy_reads_the_validation_selected_epoch():
    epochs = [{"epoch": 1, "epoch_seconds": 2.0, "val_acc": 0.99, "val_loss": 0.1, "test_acc": 0.997},
              {"epoch": 2, "epoch_seconds": 2.0, "val_acc": 0.995, "val_loss": 0.1, "test_acc": 0.99},
              {"epoch": 3, "epoch_seconds": 2.0, "val_acc": 0.994, "val_loss": 0.1, "test_acc": 0.999},
              {"epoch": 4, "epoch_seconds": 2.0, "val_acc": 0.996, "val_loss": 0.1, "test_acc": 0.996}]
    # epoch 1's test figure passes but epoch 1 is the selected one only until epoch 2
    assert validation_selected(epochs, 0.996)["epoch"] == 1
    reached = validation_selected(epochs[1:], 0.996)
    assert reached == {"epoch": 4, "selected_epoch": 4, "test_acc": 0.996, "training_seconds": 6.0}
    assert validation_selected(epochs[1:3], 0.996) is None
