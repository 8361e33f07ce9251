"""Preemption: on SIGTERM or SIGUSR1 the loop finishes the batch, writes checkpoints/step.pt and
exits 143; --resume continues from that batch and ends bit-identical to a run never stopped
(CPU, same seed: weights, averaged weights, optimizer state and every metric but the timings).
A periodic step.pt (run.checkpoint_every_steps) gives the same against SIGKILL, and under
torchrun every process agrees on the batch before rank 0 saves."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from effcn.cli import main
from effcn.training.checkpoint import load_checkpoint
from effcn.training.metrics import read_metrics

from helpers import REPO, quick_overrides, same_state, set_args

# The child signals itself from a batch callback (records arrive one batch at a time with
# train.log_every=1) and exits through effcn's own command line.
_SIGNAL_AT = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started where SIGINT is ignored
import effcn.training.trainer as trainer
from effcn.cli import main
from effcn.training.callbacks import Callback

EPOCH, STEP, SIG = {epoch}, {step}, signal.{signal}

class SignalAt(Callback):
    def on_batches(self, trainer, records):
        if any(r["epoch"] == EPOCH and r["step"] == STEP for r in records):
            os.kill({target}, SIG)

from_config = trainer.callbacks_from_config
trainer.callbacks_from_config = lambda config: from_config(config) + [SignalAt()]
sys.exit(main(sys.argv[1:]))
"""
# What must survive a stop exactly: EMA weights and a per-batch schedule are part of the state.
STATEFUL = ["train.log_every=1", "train.ema_decay=0.9", "schedule.name=onecycle"]
TIMINGS = ("epoch_seconds", "train_images_per_s", "images_per_s")


def _script(epoch: int, step: int, sig: str, target: str = "os.getpid()") -> str:
    return _SIGNAL_AT.format(epoch=epoch, step=step, signal=sig, target=target)


def _child(script: str, args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          timeout=300, **kw)


def _metrics_without_timings(run) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMINGS}
            for r in read_metrics(run / "metrics.jsonl")]


def assert_resumed_run_equals_clean(run, clean):
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (run, clean))
    for key in ("epoch", "model", "ema", "optimizer", "scheduler", "best", "skipped_steps"):
        assert same_state(a[key], b[key]), key
    assert _metrics_without_timings(run) == _metrics_without_timings(clean)
    assert not (run / "checkpoints" / "step.pt").exists()     # stale once its epoch ended


@pytest.fixture(scope="module")
def clean_run(synthetic_root, tmp_path_factory):
    """The uninterrupted 3-epoch run every stopped run must end equal to."""
    out = tmp_path_factory.mktemp("clean")
    assert main(["train", "--quiet", *set_args(
        quick_overrides(synthetic_root, out, epochs=3, name="clean") + STATEFUL)]) == 0
    return out / "clean"


@pytest.mark.parametrize("sig, epoch, step, last_epoch", [("SIGTERM", 2, 2, 1),
                                                          ("SIGUSR1", 1, 4, None)])
def test_a_stop_signal_saves_mid_epoch_and_resume_is_bit_identical(
        sig, epoch, step, last_epoch, synthetic_root, tmp_path, clean_run):
    overrides = quick_overrides(synthetic_root, tmp_path, epochs=3, name="stopped") + STATEFUL
    proc = _child(_script(epoch, step, sig), ["train", "--quiet", *set_args(overrides)])
    run = tmp_path / "stopped"
    assert proc.returncode == 143, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip() == (
        f"effcn train: error: {sig} received: stopped after batch {step + 1}/7 of epoch "
        f"{epoch}/3 and saved checkpoints/step.pt; continue with effcn train --resume {run}")
    mid = load_checkpoint(run / "checkpoints" / "step.pt")
    assert mid["mid_epoch"]["epoch"] == epoch and mid["mid_epoch"]["step"] == step + 1
    assert mid["epoch"] == epoch - 1
    last = run / "checkpoints" / "last.pt"
    assert (load_checkpoint(last)["epoch"] if last.exists() else None) == last_epoch
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]

    assert main(["train", "--quiet", "--resume", str(run)]) == 0
    assert_resumed_run_equals_clean(run, clean_run)


def test_periodic_step_checkpoints_survive_sigkill(synthetic_root, tmp_path, clean_run):
    overrides = quick_overrides(synthetic_root, tmp_path, epochs=3, name="killed") + STATEFUL + [
        "run.checkpoint_every_steps=2"]
    proc = _child(_script(2, 4, "SIGKILL"), ["train", "--quiet", *set_args(overrides)])
    run = tmp_path / "killed"
    assert proc.returncode == -signal.SIGKILL
    mid = load_checkpoint(run / "checkpoints" / "step.pt")["mid_epoch"]
    assert (mid["epoch"], mid["step"]) == (2, 4)       # saved after batches 2 and 4 of epoch 2
    # The batch records written after step.pt (batch 5) are dropped on resume and redone.
    assert main(["train", "--quiet", "--resume", str(run)]) == 0
    assert_resumed_run_equals_clean(run, clean_run)


def test_ctrl_c_after_a_periodic_step_checkpoint_names_it(synthetic_root, tmp_path):
    overrides = quick_overrides(synthetic_root, tmp_path, epochs=2, name="cut") + [
        "train.log_every=1", "run.checkpoint_every_steps=3"]
    proc = _child(_script(1, 4, "SIGINT"), ["train", "--quiet", *set_args(overrides)])
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().endswith(
        f"checkpoints/step.pt holds epoch 1 up to batch 3: continue with effcn train --resume "
        f"{tmp_path / 'cut'}")


def _torchrun(args: list[str], script: str | None = None, tmp=None):
    """effcn train under torchrun with 2 gloo processes (optionally through a wrapper script)."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    if script is None:
        target = ["-m", "effcn"]
    else:
        wrapper = tmp / "wrapper.py"
        wrapper.write_text(script)
        target = [str(wrapper)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *target, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_torchrun_sigterm_every_process_agrees_and_resume_is_bit_identical(synthetic_root,
                                                                           tmp_path):
    # log_every=2: the processes agree on a stop every 2 batches. torchrun's agent receives the
    # SIGTERM (as from a scheduler) and forwards it to both workers.
    dist_overrides = quick_overrides(synthetic_root, tmp_path, epochs=2, name="stopped") + [
        "train.log_every=2", "train.ema_decay=0.9", "model.args.norm=instance"]
    args = ["train", "--quiet", *set_args(dist_overrides)]
    proc = _torchrun(args, _script(2, 0, "SIGTERM", target="os.getppid()"), tmp_path)
    run = tmp_path / "stopped"
    stopped = re.findall(r"SIGTERM received: stopped after batch (\d+)/7 of epoch 2/2",
                         proc.stderr)
    assert len(stopped) == 2 and stopped[0] == stopped[1], proc.stderr   # both, at one batch
    mid = load_checkpoint(run / "checkpoints" / "step.pt")["mid_epoch"]
    assert (mid["epoch"], mid["world_size"], len(mid["rng"])) == (2, 2, 2)
    assert mid["step"] == int(stopped[0]) and mid["step"] % 2 == 0     # where they agree
    assert _torchrun(["train", "--quiet", "--resume", str(run)]).returncode == 0

    clean_overrides = [o.replace("run.name=stopped", "run.name=clean") for o in dist_overrides]
    assert _torchrun(["train", "--quiet", *set_args(clean_overrides)]).returncode == 0
    assert_resumed_run_equals_clean(run, tmp_path / "clean")
