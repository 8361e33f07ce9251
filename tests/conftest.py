"""Fixtures only (builders live in helpers.py): a tiny synthetic dataset in MNIST's IDX layout,
and one finished tiny run shared by the tests that only read a finished run."""

from __future__ import annotations

import importlib.util
import signal
from pathlib import Path

import pytest
import torch

from helpers import (FinishedRun, chromium_missing, quick_overrides, snapshot, start_chromium,
                     write_synthetic_idx)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """No test reaches the network: downloads (data.download defaults to true) are refused
    unless they come from this machine (the tests' local HTTP servers, file: URLs)."""
    import urllib.error
    import urllib.parse

    from effcn.data import download
    fetch = download._fetch

    def local_only(url, dest, timeout):
        if urllib.parse.urlparse(url).hostname not in (None, "127.0.0.1", "localhost"):
            raise urllib.error.URLError("the tests do not use the network")
        return fetch(url, dest, timeout)

    monkeypatch.setattr(download, "_fetch", local_only)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    return write_synthetic_idx(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def tiny_run(synthetic_root, tmp_path_factory) -> FinishedRun:
    """A finished 2-epoch run of the tiny model on ``synthetic_root``, trained once per session,
    with every artefact switched on: a checkpoint per epoch (checkpoints/epoch_NNN.pt), a
    reconstruction grid per epoch (recon/) and, when tensorboard is installed, RUN/tensorboard.

    Shared: read it, never write into it. A test that writes into a run (effcn eval writes
    RUN/eval/, visualize RUN/figures, resume the checkpoints) copies it first
    (shutil.copytree(tiny_run.path, tmp_path / "run")). At the end of the session every file is
    checked against its state right after training.
    """
    from effcn.training.config_io import load_config
    from effcn.training.trainer import Trainer

    runs = tmp_path_factory.mktemp("tiny_run")
    tensorboard = importlib.util.find_spec("tensorboard") is not None
    config = load_config(None, quick_overrides(synthetic_root, runs, epochs=2, name="tiny") + [
        "run.checkpoint_every=1", "run.recon_every=1", f"run.tensorboard={str(tensorboard).lower()}"])
    summary = Trainer(config, quiet=True).fit()
    run = FinishedRun(runs / "tiny", config, summary, synthetic_root)
    before = snapshot(run.path)
    yield run
    after = snapshot(run.path)
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert not changed, f"a test wrote into the shared tiny_run (copy it first): {changed}"


@pytest.fixture
def time_limit():
    """time_limit(seconds): fail the test, naming the limit, if it runs longer (SIGALRM)."""
    previous = signal.getsignal(signal.SIGALRM)

    def arm(seconds: float) -> None:
        def expired(signum, frame):
            pytest.fail(f"took longer than its limit of {seconds} s")
        signal.signal(signal.SIGALRM, expired)
        signal.setitimer(signal.ITIMER_REAL, seconds)

    yield arm
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture
def small_tmpfs(tmp_path):
    """mount(size_kb) -> a fresh tmpfs of that size under tmp_path (a disk that can fill up, and
    be remounted read-only: helpers.remount_readonly); unmounted afterwards. Skips, saying so,
    where this process may not mount (neither root nor CAP_SYS_ADMIN)."""
    import subprocess
    mounted = []

    def mount(size_kb: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs",
                               str(where)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'mount failed'}): "
                        f"a full or read-only disk needs root or CAP_SYS_ADMIN")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture(scope="session")
def chromium():
    """One headless Chromium (a selenium driver) for the session's browser tests; they are
    skipped, saying what to install, where chromium, chromedriver or selenium is missing."""
    missing = chromium_missing()
    if missing:
        pytest.skip(f"browser test needs headless Chromium: {missing}")
    driver = start_chromium()
    yield driver
    driver.quit()
