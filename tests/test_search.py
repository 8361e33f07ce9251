"""Optuna behind effcn sweep (a search: section): pruning that really stops runs early, two
worker processes on one study without running a trial twice, a killed worker's trial retried
by the next run, and the checks of the search section."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from effcn.errors import ConfigError
from effcn.training.metrics import read_metrics
from effcn.tools.search import open_study
from effcn.tools.sweep import load_sweep

from helpers import quick_overrides

optuna = pytest.importorskip("optuna")


def _sweep_file(tmp_path, root, search: dict, epochs: int, name="study", extra=()) -> str:
    overrides = [o for o in quick_overrides(root, tmp_path, epochs=epochs)
                 if not o.startswith(("run.dir=", "run.name=", "train.progress="))]
    spec = {"set": overrides + list(extra), "seeds": [42], "dir": str(tmp_path / name),
            "search": {"poll_seconds": 0.1, **search}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _sweep(path: str, *args, **kw) -> subprocess.Popen | subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "effcn", "sweep", path, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if kw.pop("background", False):
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, start_new_session=True)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _trials(path: str):
    return open_study(load_sweep(path)).get_trials(deepcopy=False)


def test_the_median_pruner_stops_bad_trials_early(tmp_path, synthetic_root):
    # Two good learning rates and two that learn nothing: after one complete trial, a trial
    # whose validation accuracy falls below the median of the earlier ones at an epoch stops.
    path = _sweep_file(tmp_path, synthetic_root, {
        "sampler": "random", "trials": 4, "pruner": "median", "startup_trials": 1,
        "warmup_epochs": 0, "params": {"optim.lr": {"choice": [0.003, 0.004, 1e-7, 2e-7]}}},
        epochs=6, extra=["train.log_every=1"])
    study = open_study(load_sweep(path))
    for lr in (0.003, 1e-7, 0.004, 2e-7):      # a fixed order: a good trial completes first
        study.enqueue_trial({"optim.lr": lr})
    proc = _sweep(path, "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    trials = _trials(path)
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(trials) == 4 and len(pruned) == 2, [(t.params, t.state) for t in trials]
    for t in pruned:
        run = tmp_path / "study" / t.user_attrs["run"]
        epochs = read_metrics(run / "metrics.jsonl", kind="epoch")
        assert len(epochs) < 6 and not (run / "summary.json").exists()   # stopped early
        assert yaml.safe_load((run / "trial.json").read_text())["state"] == "pruned"
        assert t.params["optim.lr"] < 1e-3
    csv = (tmp_path / "study" / "results.csv").read_text()
    assert csv.splitlines()[0].startswith("trial,state,optim.lr,") and ",pruned," in csv
    assert "pruned" in (tmp_path / "study" / "results.md").read_text()
    # Re-running continues the study: nothing more to do, nothing trained again.
    again = _sweep(path)
    assert again.returncode == 0 and len(_trials(path)) == 4


def test_a_trial_at_its_last_epoch_is_never_pruned(tmp_path, synthetic_root):
    # Stopping it there saves no compute and loses its result (it happened in the batch x lr
    # study: a 3-epoch trial pruned after epoch 3).
    path = _sweep_file(tmp_path, synthetic_root, {
        "sampler": "random", "trials": 2, "pruner": "median", "startup_trials": 1,
        "warmup_epochs": 0, "params": {"optim.lr": {"choice": [0.003, 1e-7]}}}, epochs=1)
    study = open_study(load_sweep(path))
    for lr in (0.003, 1e-7):
        study.enqueue_trial({"optim.lr": lr})
    proc = _sweep(path, "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert [t.state for t in _trials(path)] == [optuna.trial.TrialState.COMPLETE] * 2


def test_two_workers_share_one_study_without_running_a_trial_twice(tmp_path, synthetic_root):
    path = _sweep_file(tmp_path, synthetic_root, {
        "sampler": "random", "trials": 4, "params": {"optim.lr": {"log_uniform": [1e-3, 1e-2]}}},
        epochs=1)
    workers = [_sweep(path, "--workers", "1", background=True) for _ in range(2)]
    for w in workers:
        out, err = w.communicate(timeout=600)
        assert w.returncode == 0, err
    trials = _trials(path)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    # each process stops once the study holds 4; a trial both started at the end may add one
    assert 4 <= len(complete) <= 5 and len(complete) == len(trials)
    runs = [t.user_attrs["run"] for t in trials]
    assert len(set(runs)) == len(runs)                       # one folder per trial
    for run in runs:
        folder = tmp_path / "study" / run
        env = yaml.safe_load((folder / "env.json").read_text())
        assert "resumes" not in env                          # trained once, never redone
        assert len(read_metrics(folder / "metrics.jsonl", kind="epoch")) == 1


def test_a_killed_worker_s_trial_is_retried_by_the_next_run(tmp_path, synthetic_root):
    path = _sweep_file(tmp_path, synthetic_root, {
        "sampler": "random", "trials": 2, "heartbeat_interval": 1, "grace_period": 2,
        "params": {"optim.lr": {"log_uniform": [1e-3, 1e-2]}}}, epochs=8)
    worker = _sweep(path, background=True)
    first = tmp_path / "study" / "t000-seed42"
    deadline = time.time() + 300
    # last.pt, not the epoch record: the record is written first, and a kill between the two
    # leaves nothing to resume (seen once under load)
    while not (first / "checkpoints" / "last.pt").is_file():
        assert time.time() < deadline and worker.poll() is None
        time.sleep(0.2)
    os.killpg(worker.pid, signal.SIGKILL)                    # the worker and its training run
    worker.wait()
    assert _trials(path)[0].state == optuna.trial.TrialState.RUNNING   # left behind
    time.sleep(3)                                            # its heartbeat is now stale
    proc = _sweep(path)
    assert proc.returncode == 0, proc.stderr
    trials = _trials(path)
    assert trials[0].state == optuna.trial.TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].state == optuna.trial.TrialState.COMPLETE
    assert retry[0].user_attrs["run"] == "t000-seed42"      # the same folder, continued
    env = yaml.safe_load((first / "env.json").read_text())
    assert len(env["resumes"]) == 1 and (first / "summary.json").exists()
    assert retry[0].params == trials[0].params


@pytest.mark.parametrize("search, message", [
    ({"trials": 2, "params": {"optim.lr": {"choice": [1]}}, "bogus": 1}, "unknown search key"),
    ({"trials": 2, "sampler": "grid", "params": {"optim.lr": {"uniform": [0, 1]}}},
     "grid sampler takes choice lists only"),
    ({"trials": 2, "sampler": "cmaes", "params": {"optim.lr": {"choice": [1]}}},
     "choose one of grid, random, tpe"),
    ({"trials": 0, "params": {"optim.lr": {"choice": [1]}}}, "positive integer"),
    ({"trials": 2, "params": {"optim.lr": {"between": [0, 1]}}}, "needs exactly one of"),
    ({"trials": 2, "params": {"optim.lrr": {"choice": [0.1]}}}, "optim.lrr"),
    ({"trials": 2, "sampler_startup_trials": -1, "params": {"optim.lr": {"choice": [1]}}},
     "search.sampler_startup_trials must be a whole number >= 0, not -1"),
])
def test_bad_search_sections_are_one_sentence(tmp_path, synthetic_root, search, message):
    path = _sweep_file(tmp_path, synthetic_root, search, epochs=1)
    with pytest.raises(ConfigError, match=message):
        load_sweep(path)


def test_a_search_trial_is_one_run(tmp_path, synthetic_root):
    path = _sweep_file(tmp_path, synthetic_root, {"trials": 2, "params": {
        "optim.lr": {"choice": [0.1]}}}, epochs=1)
    spec = yaml.safe_load(open(path))
    spec["seeds"] = [1, 2]
    open(path, "w").write(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="seeds must hold one seed"):
        load_sweep(path)


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_continued_study_does_not_propose_its_first_settings_again(tmp_path, synthetic_root,
                                                                     sampler):
    # Optuna's samplers restart their random stream in each process: seeded with search.seed
    # alone, the re-run's first proposals were the first run's again.
    path = _sweep_file(tmp_path, synthetic_root, {
        "sampler": sampler, "trials": 4, "seed": 0,
        "params": {"optim.lr": {"log_uniform": [1.0e-4, 1.0e-2]}}}, epochs=1)

    def ask_two():  # each call stands for one `effcn sweep` process
        study = open_study(load_sweep(path))
        for _ in range(2):
            trial = study.ask()
            trial.suggest_float("optim.lr", 1.0e-4, 1.0e-2, log=True)
            study.tell(trial, 0.5)
    ask_two()
    first = [t.params["optim.lr"] for t in _trials(path)]
    ask_two()
    lrs = [t.params["optim.lr"] for t in _trials(path)]
    assert lrs[:2] == first and len(set(lrs)) == 4
    # A new study with the same seed still proposes the same settings (reproducible).
    other = _sweep_file(tmp_path, synthetic_root, {
        "sampler": sampler, "trials": 4, "seed": 0,
        "params": {"optim.lr": {"log_uniform": [1.0e-4, 1.0e-2]}}}, epochs=1, name="again")
    study = open_study(load_sweep(other))
    trial = study.ask()
    assert trial.suggest_float("optim.lr", 1.0e-4, 1.0e-2, log=True) == first[0]


def test_tpe_start_up_trials_are_a_setting(tmp_path, synthetic_root):
    # With Optuna's 10 random start-up trials, half of a 20-trial TPE study is random search.
    params = {"optim.lr": {"log_uniform": [1.0e-4, 1.0e-2]}}
    default = _sweep_file(tmp_path, synthetic_root, {"sampler": "tpe", "trials": 4,
                                                    "params": params}, epochs=1)
    short = _sweep_file(tmp_path, synthetic_root, {"sampler": "tpe", "trials": 4,
                                                  "sampler_startup_trials": 3,
                                                  "params": params}, epochs=1, name="short")
    assert open_study(load_sweep(default)).sampler._n_startup_trials == 10
    assert open_study(load_sweep(short)).sampler._n_startup_trials == 3
