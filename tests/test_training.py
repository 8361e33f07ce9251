"""Checkpoints, resume, schedules and the training loop on a tiny synthetic dataset (CPU)."""

import io
import json

import pytest
import torch

from effcn.errors import CheckpointError, ConfigError
from effcn.models import create_model
from effcn.training.checkpoint import (load_checkpoint, model_from_checkpoint, save_checkpoint)
from effcn.training.config_io import load_config
from effcn.training.metrics import read_metrics
from effcn.training.optim import build_optimizer, build_schedule
from effcn.training.trainer import Trainer

from helpers import quick_overrides


def _train(root, run_dir, epochs, name, **kw):
    config = load_config(None, quick_overrides(root, run_dir, epochs=epochs, name=name))
    return Trainer(config, quiet=True, **kw), config


def test_checkpoint_round_trip_rebuilds_model_alone(tmp_path):
    model = create_model("efficient_capsnet_tiny", routing="uniform").eval()
    save_checkpoint(tmp_path / "m.pt", {"model_name": "efficient_capsnet_tiny",
                                        "model_config": {"routing": "uniform"} | {
                                            k: v for k, v in vars(model.config).items()},
                                        "model": model.state_dict(), "epoch": 3})
    again, state = model_from_checkpoint(tmp_path / "m.pt")
    again.eval()
    x = torch.rand(2, 1, 28, 28)
    assert again.config == model.config and state["epoch"] == 3
    assert torch.equal(again(x).lengths, model(x).lengths)


def test_crafted_pickle_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"format": "effcn-checkpoint-v1", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_corrupt_and_foreign_checkpoints(tmp_path):
    good = tmp_path / "good.pt"
    model = create_model("efficient_capsnet_tiny")
    save_checkpoint(good, {"model_name": "efficient_capsnet_tiny",
                           "model_config": vars(model.config), "model": model.state_dict()})
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an effcn checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="holds model 'efficient_capsnet_tiny', not 'efficient_capsnet_mnist'"):
        load_checkpoint(good, expect_model="efficient_capsnet_mnist")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("schedule", ["exp_decay", "constant", "step", "cosine", "onecycle", "plateau"])
@pytest.mark.parametrize("optim", ["adam", "adamw", "sgd"])
def test_optimizer_and_schedule_state_survive_safe_loading(tmp_path, schedule, optim):
    config = load_config(None, [f"schedule.name={schedule}", f"optim.name={optim}",
                                "train.epochs=4", "schedule.min_lr=1e-5"])
    model = create_model("efficient_capsnet_tiny")
    opt = build_optimizer(config, model.parameters())
    sched, per_batch = build_schedule(config, opt, steps_per_epoch=5)
    model(torch.rand(2, 1, 28, 28)).lengths.sum().backward()
    opt.step()
    sched.step(0.5) if schedule == "plateau" else sched.step()
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    sched2, _ = build_schedule(config, build_optimizer(config, model.parameters()), 5)
    sched2.load_state_dict(loaded["sched"])
    assert per_batch == (schedule == "onecycle")


def test_paper_schedule_values():
    config = load_config(None, ["train.epochs=200"])
    model = create_model("efficient_capsnet_tiny")
    opt = build_optimizer(config, model.parameters())
    sched, _ = build_schedule(config, opt, 10)
    lrs = []
    for _ in range(150):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(5e-4) and lrs[10] == pytest.approx(5e-4 * 0.97 ** 10)
    assert lrs[149] == pytest.approx(5e-5) and min(lrs) == pytest.approx(5e-5)


def test_training_run_writes_everything_and_learns(synthetic_root, tmp_path):
    trainer, _ = _train(synthetic_root, tmp_path, epochs=3, name="learn")
    summary = trainer.fit()
    run = tmp_path / "learn"
    for f in ("config.yaml", "env.json", "metrics.jsonl", "summary.json",
              "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (run / f).is_file(), f
    epochs = read_metrics(run / "metrics.jsonl", "epoch")
    batches = read_metrics(run / "metrics.jsonl", "batch")
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert len(batches) == 3 * 7  # 200 training images / batch 32 -> 7 batches per epoch
    assert summary["best_val_acc"] == max(r["val_acc"] for r in epochs)
    assert summary["test_images"] == 80 and summary["val_images"] == 40
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert json.loads((run / "summary.json").read_text())["test_acc"] == summary["test_acc"]
    assert "torch" in json.loads((run / "env.json").read_text())


def test_same_seed_same_run_and_resume_is_exact(synthetic_root, tmp_path):
    full, _ = _train(synthetic_root, tmp_path, epochs=2, name="full")
    full.fit()
    half, _ = _train(synthetic_root, tmp_path, epochs=1, name="half")
    half.fit()
    # continue the 1-epoch run to 2 epochs, as `effcn train --resume RUN --set train.epochs=2`
    config = load_config(None, quick_overrides(synthetic_root, tmp_path, epochs=2, name="half"))
    resumed = Trainer(config, run_dir=tmp_path / "half", resume=True, quiet=True)
    resumed.fit()
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "half" / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ea = read_metrics(tmp_path / "full" / "metrics.jsonl", "epoch")
    eb = read_metrics(tmp_path / "half" / "metrics.jsonl", "epoch")
    assert [r["val_acc"] for r in ea] == [r["val_acc"] for r in eb]
    assert [r["train_loss"] for r in ea] == [r["train_loss"] for r in eb]


@pytest.mark.parametrize("saved", [True, False])
def test_a_resumed_run_s_train_seconds_count_every_session(synthetic_root, tmp_path, saved):
    first, _ = _train(synthetic_root, tmp_path, epochs=1, name="run")
    first.fit()
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    assert 0 < state["train_seconds"] <= json.loads(
        (tmp_path / "run" / "summary.json").read_text())["wall_seconds"]
    # Pretend the first session took long: 1,000 s in the checkpoint, or (a checkpoint from
    # before train_seconds was saved) 1,000 s of logged epoch time.
    if saved:
        state["train_seconds"] = 1000.0
    else:
        del state["train_seconds"]
        log = tmp_path / "run" / "metrics.jsonl"
        records = [json.loads(line) for line in log.read_text().splitlines()]
        for r in records:
            if r["kind"] == "epoch":
                r["epoch_seconds"] = 1000.0
        log.write_text("".join(json.dumps(r) + "\n" for r in records))
    save_checkpoint(last, state)
    config = load_config(None, quick_overrides(synthetic_root, tmp_path, epochs=2, name="run"))
    summary = Trainer(config, run_dir=tmp_path / "run", resume=True, quiet=True).fit()
    assert 1000 < summary["train_seconds"] < 1000 + summary["wall_seconds"]
    assert load_checkpoint(last)["train_seconds"] == pytest.approx(summary["train_seconds"],
                                                                   abs=5.0)


def test_existing_named_run_dir_is_refused(synthetic_root, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("precious")
    with pytest.raises(Exception, match="already exists"):
        _train(synthetic_root, tmp_path, epochs=1, name="taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "precious"


def test_model_dataset_mismatch_is_clear(synthetic_root, tmp_path):
    config = load_config(None, quick_overrides(synthetic_root, tmp_path, 1, "mm") +
                         ["model.name=efficient_capsnet_multimnist"])
    with pytest.raises(ConfigError, match="has 1x28x28 images but model efficient_capsnet_multimnist expects 1x36x36"):
        Trainer(config, quiet=True).fit()


def test_a_given_run_dir_is_the_one_the_trainer_writes_and_resumes(synthetic_root, tmp_path):
    from effcn.training.rundir import RunDir
    run = RunDir(tmp_path / "given")
    config = load_config(None, quick_overrides(synthetic_root, tmp_path, epochs=1, name="x"))
    trainer = Trainer(config, run=run, quiet=True)
    assert trainer.run is run
    with pytest.raises(AttributeError, match="exists once fit"):
        trainer.model  # noqa: B018 -- built by fit()
    assert trainer.fit()["run_dir"] == str(run.path)
    config.train.epochs = 2
    resumed = Trainer(config, run=run, resume=True, quiet=True)
    assert resumed.run is run
    assert resumed.fit()["best_epoch"] in (1, 2) and resumed.start_epoch == 2
    assert [r["epoch"] for r in read_metrics(run.metrics_path, kind="epoch")] == [1, 2]


def test_resume_without_a_checkpoint_is_refused_before_anything_loads(synthetic_root, tmp_path):
    from effcn.errors import EffcnError
    run = tmp_path / "early"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("{}\n")
    config = load_config(None, quick_overrides(synthetic_root, tmp_path, epochs=1, name="early"))
    with pytest.raises(EffcnError, match="has no checkpoints/last.pt"):
        Trainer(config, run_dir=run, resume=True, quiet=True)
