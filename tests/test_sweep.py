"""effcn sweep: expansion, parallel runs, resumability, honest aggregation over seeds."""

import csv
import subprocess
import sys

import pytest

from effcn.errors import ConfigError
from effcn.tools.sweep import expand, load_sweep

from helpers import quick_overrides


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


def test_seeds_alone_sweep_one_config(tmp_path):
    """N seeds of one config (what runs side by side on one GPU) need no grid."""
    spec = tmp_path / "seeds.yaml"
    spec.write_text("seeds: [1, 2, 3, 4]\nworkers: 4\n")
    runs = expand(load_sweep(spec))
    assert [r.name for r in runs] == [f"base-seed{k}" for k in (1, 2, 3, 4)]
    assert all(r.params == {} for r in runs)


@pytest.mark.parametrize("text, message", [
    ("grid:\n  train.epochz: [1, 2]\n", "did you mean train.epochs"),
    ("seeds: [1]\n", "neither grid, random nor search"),
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
    assert all(float(row["wall_seconds"]) >= float(row["train_seconds"]) > 0 for row in rows)
    # a run without its summary (interrupted after its last checkpoint) is resumed, not redone
    (out / rows[0]["run"] / "summary.json").unlink()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skipped (finished)") == 3 and again.stdout.count(": resumed") == 1
    assert (out / rows[0]["run"] / "summary.json").is_file()


def test_random_search_is_seeded_and_names_every_sample_apart(tmp_path):
    spec = tmp_path / "r.yaml"
    # values that agree to 3 digits: their run names must still differ
    spec.write_text("random:\n  samples: 3\n  seed: 7\n  params:\n"
                    "    optim.lr: {log_uniform: [1.0e-3, 1.001e-3]}\n"
                    "    train.batch_size: {choice: [16, 32]}\nseeds: [1]\n")
    runs = expand(load_sweep(spec))
    assert [r.name.split("-")[0] for r in runs] == ["r0", "r1", "r2"]
    assert all(1e-3 <= r.params["optim.lr"] <= 1.001e-3 and r.params["train.batch_size"] in (16, 32)
               for r in runs)
    assert [r.params for r in expand(load_sweep(spec))] == [r.params for r in runs]


def test_grid_value_listed_twice_is_refused(tmp_path):
    spec = tmp_path / "d.yaml"
    spec.write_text("grid:\n  train.epochs: [1, 1]\n")
    with pytest.raises(ConfigError, match="share the run folder"):
        expand(load_sweep(spec))


def test_sweep_with_a_failing_run_exits_non_zero(synthetic_root, tmp_path):
    spec = _write_spec(tmp_path, synthetic_root).read_text().replace(
        "train.recon_weight: [0.0, 0.392]", "data.val_size: [40, 100000]").replace(
        "seeds: [1, 2]", "seeds: [1]").replace("  - data.val_size=40\n", "")
    (tmp_path / "fail.yaml").write_text(spec)
    r = subprocess.run([sys.executable, "-m", "effcn", "sweep", str(tmp_path / "fail.yaml")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1
    assert "val_size=100000-seed1: failed: effcn train: error: data.val_size=100000 leaves no " \
           "training images" in r.stdout
    assert "1 run(s) of the sweep failed (val_size=100000-seed1)" in r.stderr
    rows = list(csv.DictReader((tmp_path / "sweep" / "results.csv").open()))
    assert [bool(row["test_acc"]) for row in rows] == [True, False]


def test_threads_per_run_honours_the_flag_then_the_environment(monkeypatch):
    from effcn.tools.sweep_runs import run_env, threads_per_run
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads_per_run(2) == 4 and threads_per_run(16) == 1
    # A sweep told to use one core (e.g. two sweeps side by side) must not take all of them:
    # its runs used to get cpu_count // workers whatever OMP_NUM_THREADS said.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads_per_run(1) == 1 and run_env(threads_per_run(1))["OMP_NUM_THREADS"] == "1"
    assert threads_per_run(1, threads=3) == 3
    with pytest.raises(ConfigError, match="--threads must be at least 1, not 0"):
        threads_per_run(1, threads=0)
