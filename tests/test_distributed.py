"""Data-parallel training under torchrun: 2 gloo processes on the CPU against 1 process.

A 2-process run with global batch B takes the same batches as a 1-process run with batch B, split
in two, and DDP averages the two halves' gradients: with equal halves that is the gradient of the
global batch's mean loss, so the weights must agree up to float rounding. That holds exactly only
for a model without cross-sample statistics: BatchNorm normalises each process's half with its own
mean and variance (PyTorch's SyncBatchNorm, which would share them, runs on CUDA only), so the
tight comparison uses model.args.norm=instance; the BatchNorm preset is compared loosely.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from effcn.training.checkpoint import load_checkpoint
from effcn.training.config_io import load_config
from effcn.errors import ConfigError
from effcn.models import create_model
from effcn.training.distributed import DistInfo, shard, steps_per_epoch, wrap
from effcn.training.metrics import read_metrics
from effcn.training.trainer import Trainer

from helpers import REPO, quick_overrides

# NCHW: oneDNN's channels_last kernels round differently at batch 16 and 32, and 14 Adam steps
# magnify that to ~2e-3 (as much as switching the layout alone moves these weights, measured).
# fp32 for the same reason: bf16 rounds half-batch and whole-batch sums differently.
EXACT = ["data.augment=none", "model.args.norm=instance", "train.channels_last=false",
         "train.amp=off"]


def _torchrun(overrides: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "effcn", "train", "--quiet"]
    for o in overrides:
        cmd += ["--set", o]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _weights(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def _max_diff(a: dict, b: dict) -> float:
    """Largest |a - b| over the float tensors of two state dicts."""
    return max((a[k] - b[k]).abs().max().item() for k in b if b[k].is_floating_point())


def test_shards_cover_the_global_batch_once():
    batch = torch.arange(7)
    parts = [shard(batch, DistInfo(r, 2)) for r in range(2)]
    assert sorted(torch.cat(parts).tolist()) == list(range(7))
    assert steps_per_epoch(65, 32, DistInfo(0, 2)) == 2   # a last batch of 1 cannot be split
    assert steps_per_epoch(66, 32, DistInfo(0, 2)) == 3
    assert steps_per_epoch(65, 32, DistInfo()) == 3


def _one_process(root, out, name, extra=()):
    config = load_config(None, quick_overrides(root, out, epochs=2, name=name) + list(extra))
    Trainer(config, quiet=True).fit()
    return out / name


def test_sync_batchnorm_on_cpu_is_a_clear_error():
    with pytest.raises(ConfigError, match="needs CUDA"):
        wrap(create_model("efficient_capsnet_tiny"), DistInfo(0, 2), torch.device("cpu"),
             sync_batchnorm=True)


@pytest.fixture(scope="module")
def two_and_one(synthetic_root, tmp_path_factory):
    """The same config trained by torchrun with 2 processes and in-process with 1."""
    out = tmp_path_factory.mktemp("ddp")
    proc = _torchrun(quick_overrides(synthetic_root, out, epochs=2, name="two") + EXACT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "two", _one_process(synthetic_root, out, "one", EXACT), proc


def test_two_processes_match_one_with_the_same_global_batch(two_and_one, synthetic_root,
                                                            tmp_path):
    two, one, _ = two_and_one
    # 14 Adam steps of lr 3e-3 move a weight by up to 0.04. Summing the batch in two halves
    # changes float rounding (~1e-7), which Adam's normalisation magnifies for weights whose
    # gradients are near zero (conv biases before InstanceNorm): measured max 6e-5 on an AMD
    # EPYC, 5.7e-4 on an Intel Xeon (oneDNN picks other kernels per CPU).
    diff = _max_diff(_weights(two), _weights(one))
    assert diff < 2e-3
    # ...far below what a real difference in the training makes: half the batch per step.
    half = _one_process(synthetic_root, tmp_path, "half", EXACT + ["train.batch_size=16"])
    assert diff < _max_diff(_weights(half), _weights(one)) / 10


def test_rank_zero_writes_everything_once(two_and_one):
    two, one, proc = two_and_one
    epochs = read_metrics(two / "metrics.jsonl", kind="epoch")
    assert [r["epoch"] for r in epochs] == [1, 2]            # not one line per process
    ref = read_metrics(one / "metrics.jsonl", kind="epoch")
    # epoch figures are over both shards: the same as the 1-process run's
    for a, b in zip(epochs, ref):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=1e-6)
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert (two / "summary.json").is_file()
    assert proc.stdout.count('"test_acc"') == 1               # the CLI prints on rank 0 only


@pytest.mark.slow  # two more runs (~1 min on a busy 2-core CPU)
def test_batchnorm_two_processes_are_closer_to_one_than_half_the_batch(synthetic_root, tmp_path):
    # BatchNorm: each process normalises its half with its own statistics, so the runs differ
    # by more than rounding; they must still be closer than a run that sees half the batch.
    plain = ["data.augment=none"]
    proc = _torchrun(quick_overrides(synthetic_root, tmp_path, epochs=2, name="two") + plain)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = _one_process(synthetic_root, tmp_path, "one", plain)
    half = _one_process(synthetic_root, tmp_path, "half", plain + ["train.batch_size=16"])
    two_diff = _max_diff(_weights(tmp_path / "two"), _weights(one))
    assert two_diff < _max_diff(_weights(half), _weights(one))
