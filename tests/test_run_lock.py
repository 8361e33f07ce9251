"""One run, one writer (effcn.io.RunLock): a second writer is refused in one sentence naming the
holder, a killed holder frees the lock, readers never wait, and a file system without locks is
written after one warning."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from helpers import (assert_one_sentence_error, effcn_in_process, effcn_process, quick_overrides,
                     set_args, snapshot)

import effcn.io as io
from effcn.errors import RunLocked
from effcn.io import RunLock, RunLockWarning, run_lock_holder, wait_for_run_lock

SRC = str(Path(__file__).resolve().parents[1] / "src")

# A child process that takes a run's lock, says so, and holds it until killed.
HOLDER = ("import sys, time; from effcn.io import RunLock; "
          "lock = RunLock(sys.argv[1], command='the test holder'); lock.acquire(); "
          "print('held', flush=True); time.sleep(600)")


def start_holder(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def stop(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    proc.send_signal(sig)
    proc.wait(timeout=30)


def test_a_second_writer_in_this_process_is_refused_and_the_lock_file_goes(tmp_path):
    with RunLock(tmp_path / "run") as lock:
        assert (tmp_path / "run" / ".lock").is_file()
        assert run_lock_holder(tmp_path / "run")["pid"] == os.getpid()
        with pytest.raises(RunLocked, match=f"process {os.getpid()} on "):
            RunLock(tmp_path / "run").acquire()
        assert lock.held  # the refused attempt did not release the holder's POSIX lock
    assert not (tmp_path / "run" / ".lock").exists()
    assert run_lock_holder(tmp_path / "run") is None
    with RunLock(tmp_path / "run"):  # free again
        pass


def test_the_lock_of_a_killed_holder_is_free(tmp_path):
    run = tmp_path / "run"
    holder = start_holder(run)
    try:
        info = run_lock_holder(run)
        assert info["pid"] == holder.pid and info["command"] == "the test holder"
        with pytest.raises(RunLocked) as refused:
            RunLock(run).acquire()
        message = str(refused.value)
        assert f"process {holder.pid} on {info['host']} since {info['since']}" in message
        assert "wait for it to finish or stop it" in message and len(message.splitlines()) == 1
    finally:
        stop(holder)  # SIGKILL: no clean-up ran, the stale .lock file stays
    assert (run / ".lock").is_file() and run_lock_holder(run) is None
    with RunLock(run) as lock:
        assert lock.held and run_lock_holder(run)["pid"] == os.getpid()


def test_waiting_for_a_lock_is_bounded_and_ends_when_the_holder_goes(tmp_path):
    run = tmp_path / "run"
    holder = start_holder(run)
    try:
        t0 = time.monotonic()
        with pytest.raises(RunLocked, match=f"process {holder.pid} "):
            wait_for_run_lock(run, timeout=0.5, poll=0.1)
        assert time.monotonic() - t0 < 5
    finally:
        stop(holder, signal.SIGTERM)
    wait_for_run_lock(run, timeout=5, poll=0.1)  # returns at once: the holder is gone


def _quick_run(root: Path, runs: Path, name: str, epochs: int) -> Path:
    from effcn.training.config_io import load_config
    from effcn.training.trainer import Trainer
    Trainer(load_config(None, quick_overrides(root, runs, epochs=epochs, name=name)),
            quiet=True).fit()
    return runs / name


def _weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu",
                      weights_only=True)["model"]


def test_a_second_effcn_train_is_refused_and_leaves_the_run_as_one_writer_leaves_it(
        synthetic_root, tmp_path):
    first = _quick_run(synthetic_root, tmp_path, "one", epochs=1)
    assert not (first / ".lock").exists()  # training released (and removed) its lock
    contested = tmp_path / "two"
    shutil.copytree(first, contested)
    holder = start_holder(contested)
    before = snapshot(contested)
    try:
        proc = effcn_process("train", "--resume", str(contested), *set_args(["train.epochs=2"]))
    finally:
        stop(holder)
    assert_one_sentence_error(proc.returncode, proc.stderr,
                              f"{contested} is being written by process {holder.pid} on ")
    assert "(the test holder)" in proc.stderr
    after = snapshot(contested)
    assert after == before  # the refused writer wrote nothing, not even its lock
    # Once the holder is gone, the run resumes exactly as the uncontested copy does.
    for run in (first, contested):
        proc = effcn_process("train", "--resume", str(run), "--quiet",
                             *set_args(["train.epochs=2"]))
        assert proc.returncode == 0, proc.stderr
    a, b = _weights(first), _weights(contested)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    files = lambda run: sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    assert files(first) == files(contested)  # (file bytes differ by paths and clock times)


def test_readers_never_wait_for_a_writer(tiny_run, tmp_path, capsys):
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(tiny_run.path, run)  # eval writes RUN/eval
    holder = start_holder(run)
    try:
        code, out, err = effcn_in_process(["runs", run.parent], capsys)
        assert code == 0 and "tiny" in out, err
        code, out, err = effcn_in_process(["eval", run, "--no-affnist"], capsys)
        assert code == 0, err
        assert run_lock_holder(run)["pid"] == holder.pid  # still held by the writer
    finally:
        stop(holder)


def test_readers_run_beside_a_training_writer(synthetic_root, tmp_path, capsys):
    """A real `effcn train` holds the lock while `effcn runs` and `effcn eval` read its run."""
    run = tmp_path / "runs" / "busy"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    writer = subprocess.Popen([sys.executable, "-m", "effcn", "train", "--quiet",
                               *set_args(quick_overrides(synthetic_root, run.parent, epochs=500,
                                                         name="busy"))],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints" / "best.pt").is_file():  # one epoch done
            assert writer.poll() is None, writer.stderr.read()
            assert time.monotonic() < deadline, "the writer finished no epoch in 120 s"
            time.sleep(0.2)
        assert run_lock_holder(run)["pid"] == writer.pid
        code, out, err = effcn_in_process(["runs", run.parent], capsys)
        assert code == 0 and "busy" in out, err
        code, out, err = effcn_in_process(["eval", run, "--no-affnist"], capsys)
        assert code == 0 and "test" in out, err
        assert writer.poll() is None and run_lock_holder(run)["pid"] == writer.pid
    finally:
        stop(writer)


class _NoLocks:
    """fcntl on a file system without locks (NFS without lockd): every lockf is ENOLCK."""
    LOCK_EX, LOCK_NB = 2, 4

    @staticmethod
    def lockf(fd, how):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))


def test_a_file_system_without_locks_warns_once_and_training_goes_on(synthetic_root, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setattr(io, "fcntl", _NoLocks)
    monkeypatch.setattr(io, "_warned_no_locks", False)
    with pytest.warns(RunLockWarning, match="has no file locks"):
        run = _quick_run(synthetic_root, tmp_path, "unlocked", epochs=1)
    assert (run / "summary.json").is_file() and not (run / ".lock").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per process, not once per run
        with RunLock(tmp_path / "other") as lock:
            assert not lock.held
    assert run_lock_holder(tmp_path / "other") is None


def test_a_sweep_run_still_written_by_another_process_fails_naming_it(tmp_path, monkeypatch):
    from effcn.tools import sweep_runs
    from effcn.tools.sweep import run_one
    from effcn.tools.sweep_runs import SweepRun
    monkeypatch.setattr(sweep_runs, "LOCK_WAIT_SECONDS", 0.5)
    spec = {"dir": str(tmp_path), "set": [], "base": None}
    run = SweepRun("r-seed0", {}, 0)
    holder = start_holder(tmp_path / run.name)
    try:
        before = snapshot(tmp_path)
        _, status = run_one(spec, run, threads=1)
        assert status.startswith("failed: ") and f"process {holder.pid} " in status
        assert snapshot(tmp_path) == before  # not removed, not trained a second time
    finally:
        stop(holder)


def test_a_retried_search_trial_whose_run_is_still_written_fails_with_the_reason(
        synthetic_root, tmp_path, monkeypatch):
    pytest.importorskip("optuna")
    import yaml

    from effcn.tools import sweep_runs
    from effcn.tools.search import TrialFailed, open_study, train_trial
    from effcn.tools.sweep import load_sweep
    monkeypatch.setattr(sweep_runs, "LOCK_WAIT_SECONDS", 0.5)
    overrides = [o for o in quick_overrides(synthetic_root, tmp_path, epochs=1)
                 if not o.startswith(("run.dir=", "run.name=", "train.progress="))]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({
        "set": overrides, "seeds": [42], "dir": str(tmp_path / "study"),
        "search": {"trials": 1, "poll_seconds": 0.1,
                   "params": {"optim.lr": {"log_uniform": [1.0e-4, 1.0e-2]}}}}))
    spec = load_sweep(path)
    trial = open_study(spec).ask()
    run = tmp_path / "study" / f"t{trial.number:03d}-seed42"  # the folder its first try trains
    holder = start_holder(run)
    try:
        with pytest.raises(TrialFailed, match=f"being written by process {holder.pid} "):
            train_trial(spec, trial, threads=1)
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing started beside it
    finally:
        stop(holder)


def test_asking_who_holds_a_lock_never_takes_it(tmp_path, monkeypatch):
    """run_lock_holder tests the lock (F_TEST) instead of taking it, so a writer that starts
    while a sweep polls the lock is never refused by the poll."""
    taken = []
    real = io.fcntl.lockf
    monkeypatch.setattr(io.fcntl, "lockf", lambda fd, how, *a: (taken.append(how),
                                                                  real(fd, how, *a))[1])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / io.LOCK_NAME).write_text("{}")
    assert run_lock_holder(tmp_path / "run") is None and taken == []
