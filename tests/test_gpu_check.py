"""benchmarks/gpu_check.sh runs end to end on the CPU with --smoke (on a GPU it runs for real)."""

from __future__ import annotations

import json
import subprocess

from helpers import REPO


def test_gpu_check_smoke(synthetic_root, tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--smoke",
                           "--data-root", str(synthetic_root), "--out", str(out),
                           "--runs", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["smoke"] and report["speed"][0]["seconds_per_mnist_epoch"] > 0
    t = report["time_to_accuracy"]
    assert t["selection"].startswith("test-selected") and t["epochs_run"] == 1
    assert "time to 99.6% test accuracy" in proc.stdout
