"""Tasks plug into the one loop: MultiMNIST honours every train.* switch and shards under
torchrun, no task's step waits for the device, and `effcn bench` times the trainer's own step
with each model's own loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from effcn.data.multimnist import MultiMNIST
from effcn.data.numbers import MNISTNumbers
from effcn.models.cnn import BaselineCNN
from effcn.tools.bench import BenchSettings, EffcnContender, run_bench
from effcn.training.config_io import load_config
from effcn.training.metrics import read_metrics
from effcn.training.tasks import (TASKS, ClassificationTask, MultiMNISTTask, SemiSupervisedTask,
                                  task_for)
from effcn.training.trainer import Trainer

from helpers import REPO, multimnist_overrides, quick_overrides, task_overrides


def test_task_for_builds_the_named_task_with_its_args(synthetic_root, tmp_path):
    assert isinstance(task_for(load_config(None, quick_overrides(synthetic_root, tmp_path))),
                      ClassificationTask)
    task = task_for(load_config(None, multimnist_overrides(synthetic_root, tmp_path, "mm")))
    assert isinstance(task, MultiMNISTTask)
    assert task.args == MultiMNISTTask.Args(partners=1, test_digits=30)
    config = load_config(None, quick_overrides(synthetic_root, tmp_path)
                         + ["task.name=semi_supervised", "task.args.labeled=20"])
    assert isinstance(task_for(config), SemiSupervisedTask)
    assert task_for(config).args.labeled == 20 and task_for(config).args.labeled_seed == 0


def test_every_registered_task_declares_its_args_and_names_itself():
    import dataclasses

    from effcn.training.tasks import TASKS
    assert set(TASKS) == {"classification", "semi_supervised", "multimnist", "numbers"}
    for name, task in TASKS.items():
        assert task.name == name and dataclasses.is_dataclass(task.Args)
        task.Args()  # the defaults are valid


def test_multimnist_runs_in_the_precision_it_records(synthetic_root, tmp_path, monkeypatch):
    """train.amp=bf16 trains MultiMNIST under bf16 autocast (its losses differ from fp32's) and
    the summary says so; the final test is fp32 unless train.test_amp asks for bf16."""
    monkeypatch.setattr(MultiMNIST, "sha256", {})
    runs = {}
    for amp in ("bf16", "off"):
        config = load_config(None, multimnist_overrides(synthetic_root, tmp_path, amp,
                                                        [f"train.amp={amp}"]))
        summary = Trainer(config, quiet=True).fit()
        runs[amp] = summary, [r["loss"] for r in read_metrics(tmp_path / amp / "metrics.jsonl",
                                                              "batch")]
    (bf16, bf16_losses), (fp32, fp32_losses) = runs["bf16"], runs["off"]
    assert bf16["precision"] == "bf16 autocast" and fp32["precision"] == "fp32"
    assert bf16["test_precision"] == fp32["test_precision"] == "fp32"
    assert len(bf16_losses) == len(fp32_losses) == 2
    # the same weights and pairs at the first step: only the precision differs
    assert bf16_losses[0] != fp32_losses[0]
    assert bf16_losses[0] == pytest.approx(fp32_losses[0], rel=0.05)


_RANK_SCRIPT = """
import json, os, sys
import torch
from effcn.training.config_io import load_config
from effcn.training.trainer import Trainer
from effcn.data.multimnist import MultiMNIST
from effcn.data.numbers import MNISTNumbers
MultiMNIST.sha256 = {}
trainer = Trainer(load_config(None, sys.argv[2:]), quiet=True)
seen, compose = [], trainer.task.train_batch
def spy(idx, generator):
    seen.append(idx.tolist())
    return compose(idx, generator)
trainer.task.train_batch = spy
trainer.fit()
weights = [p.detach().double().sum().item() for p in trainer.model.parameters()]
with open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump({"batches": seen, "weights": weights}, f)
del trainer
"""


def test_multimnist_under_torchrun_shards_each_batch_and_exchanges_gradients(synthetic_root,
                                                                             tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT)
    overrides = multimnist_overrides(synthetic_root, tmp_path, "ddp",
                                     ["train.amp=off", "train.batch_size=16",
                                      "model.args.norm=instance"])
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'src'}", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(script), str(tmp_path), *overrides],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(r0["batches"]) == len(r1["batches"]) == 4            # 64 digits / 16
    for a, b in zip(r0["batches"], r1["batches"]):
        assert len(a) == len(b) == 8 and not set(a) & set(b)        # each half of the batch
    assert sorted(i for b in r0["batches"] + r1["batches"] for i in b) == list(range(64))
    # different pairs on each process, one model: the gradients were averaged
    assert r0["weights"] == pytest.approx(r1["weights"], rel=1e-5, abs=1e-6)


def test_bench_times_each_models_own_loss(monkeypatch):
    calls = []
    own = BaselineCNN.classification_loss
    monkeypatch.setattr(BaselineCNN, "classification_loss",
                        lambda self, out, y: calls.append(self.config.loss) or own(self, out, y))
    settings = dict(batch_size=8, steps=2, repeats=1, warmup=1, eval_images=16, device="cpu",
                    augment="none")
    run_bench(BenchSettings(model="cnn_baseline_tiny", **settings))
    assert calls and set(calls) == {"cross_entropy"}
    calls.clear()
    run_bench(BenchSettings(model="efficient_capsnet_tiny", **settings))
    assert not calls  # the capsule network keeps the margin loss


def test_bench_uses_the_configured_optimizer(tmp_path):
    config = tmp_path / "sgd.yaml"
    config.write_text("optim:\n  name: sgd\n  lr: 0.01\n  momentum: 0.5\n")
    c = EffcnContender(BenchSettings(model="efficient_capsnet_tiny", batch_size=4, steps=1,
                                     eval_images=8, device="cpu", config=str(config)))
    assert isinstance(c.step.optimizer, torch.optim.SGD)
    assert c.step.optimizer.param_groups[0]["momentum"] == 0.5
    before = [p.detach().clone() for p in c.model.parameters()]
    c.train_step()
    assert any(not torch.equal(a, p) for a, p in zip(before, c.model.parameters()))


@pytest.mark.parametrize("optimizer", ["fused", "capturable"])
@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_training_step_never_waits_for_the_device(task, optimizer, synthetic_root, tmp_path,
                                                    monkeypatch):
    """The whole step (TrainStep.train: composing the batch, forward, loss, backward, the
    optimizer -- the fused Adam with its Keras-epsilon hook, or the CapturableAdam a CUDA graph
    replays --, the EMA update and the running sums) reads no value back to the host (no
    .item(), no bool() of a tensor): the loop syncs only when it flushes its log."""
    monkeypatch.setattr(MultiMNIST, "sha256", {})  # the synthetic digits are not MNIST's
    monkeypatch.setattr(MNISTNumbers, "sha256", {})
    inside, reads = [False], []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        def read(self, *args, _real=getattr(torch.Tensor, name), _name=name, **kwargs):
            if inside[0]:
                reads.append(_name)
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, read)
    inside[0] = True
    assert not torch.zeros(1) and torch.ones(1).item() == 1 and reads == ["__bool__", "item"]
    inside[0], reads[:] = False, []

    def watched(real):
        def call(*args, **kwargs):
            outer, inside[0] = inside[0], True
            try:
                return real(*args, **kwargs)
            finally:
                inside[0] = outer
        return call

    from effcn.training import state
    from effcn.training.step import TrainStep
    monkeypatch.setattr(TrainStep, "train", watched(TrainStep.train))
    if optimizer == "capturable":
        build = state.build_optimizer
        monkeypatch.setattr(state, "build_optimizer",
                            lambda config, params, capturable=False: build(config, params, True))
    for cls in set(TASKS.values()):
        monkeypatch.setattr(cls, "train_batch", watched(cls.train_batch))
    overrides = task_overrides(task, synthetic_root, tmp_path)
    config = load_config(None, overrides + ["train.log_every=100", "train.ema_decay=0.99"])
    assert type(task_for(config)) is TASKS[task]
    trainer = Trainer(config, quiet=True)
    trainer.fit()
    assert inside == [False] and reads == []
    assert (type(trainer.optimizer).__name__ == "CapturableAdam") == (optimizer == "capturable")
