"""A plain `pip install .` (no extras) in a fresh virtual environment runs the main job."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from helpers import REPO, SHARED_MNIST


@pytest.mark.slow  # a fresh venv, torch and a build of the package: about 40 s here
def test_plain_pip_install_trains_on_mnist(tmp_path):
    if not (SHARED_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"needs the real MNIST files in {SHARED_MNIST}")
    venv = tmp_path / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    # the torch already in use (the CPU build here), so pip never reaches for a CUDA build
    subprocess.run(pip + [f"torch=={torch.__version__.split('+')[0]}"], check=True)
    subprocess.run(pip + [str(REPO)], check=True, cwd=tmp_path)
    python = str(venv / "bin" / "python")
    where = subprocess.run([python, "-c", "import effcn, yaml, tqdm; print(effcn.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert str(venv) in where  # the installed package, not the source tree
    extras = subprocess.run([python, "-c", "import matplotlib"], capture_output=True, cwd=tmp_path)
    assert extras.returncode != 0  # a plain install: no extras came along
    proc = subprocess.run(
        [str(venv / "bin" / "effcn"), "train", "--config", str(REPO / "configs" / "mnist_cpu.yaml"),
         "--set", f"data.root={SHARED_MNIST}", "--set", "train.epochs=1",
         "--set", "data.train_subset=1000", "--set", "data.val_size=1000",
         "--set", f"run.dir={tmp_path / 'runs'}", "--set", "run.name=plain"],
        capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "plain" / "summary.json").read_text())
    assert summary["test_images"] == 10_000 and summary["train_images"] == 1000
    assert summary["test_acc"] > 0.2  # 31 steps on 1,000 real digits: above chance (0.1)
