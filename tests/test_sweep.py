"""effcn sweep: expansion, parallel runs, resumability, honest aggregation over seeds."""

import csv
import subprocess
import sys

import pytest

from effcn.errors import ConfigError
from effcn.sweep import expand, load_sweep

from conftest import quick_overrides


def _write_spec(tmp_path, root, extra=""):
    sets = [o for o in quick_overrides(root, tmp_path, epochs=1, name="x")
            if not o.startswith(("run.", "train.progress"))]
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        "set:\n" + "".join(f"  - {o}\n" for o in sets) +
        "grid:\n  train.recon_weight: [0.0, 0.392]\n"
        f"seeds: [1, 2]\nworkers: 2\ndir: {tmp_path / 'sweep'}\n" + extra)
    return spec


def test_expand_grid_bundles_and_seeds(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("grid:\n  model.args.routing: [self_attention, uniform]\n"
                    "  train.batch_size,optim.lr: [[16, 5.0e-4], [64, 2.0e-3]]\nseeds: [1, 2, 3]\n")
    runs = expand(load_sweep(spec))
    assert len(runs) == 2 * 2 * 3
    assert runs[0].params == {"model.args.routing": "self_attention", "train.batch_size": 16,
                              "optim.lr": 5e-4}
    assert len({r.name for r in runs}) == len(runs)


@pytest.mark.parametrize("text, message", [
    ("grid:\n  train.epochz: [1, 2]\n", "did you mean train.epochs"),
    ("seeds: [1]\n", "neither grid nor random"),
    ("grid:\n  train.epochs: [1]\nwrokers: 2\n", "unknown key"),
    ("grid:\n  train.batch_size,optim.lr: [[16]]\n", "must be a list of 2 values"),
])
def test_bad_sweep_files(tmp_path, text, message):
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    with pytest.raises(ConfigError, match=message):
        expand(load_sweep(spec))


def test_sweep_runs_in_parallel_aggregates_and_resumes(synthetic_root, tmp_path):
    spec = _write_spec(tmp_path, synthetic_root)
    cmd = [sys.executable, "-m", "effcn", "sweep", str(spec)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "sweep"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 and all(row["test_acc"] for row in rows)
    md = (out / "results.md").read_text()
    assert "| train.recon_weight | n |" in md and md.count("| 2 |") == 2  # two settings, n = 2 each
    assert (out / "results.png").stat().st_size > 0
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("skipped (finished)") == 4
