"""The semi-supervised task: a fixed, class-balanced labeled subset carved from the training split,
unsupervised terms that reach the model through the unlabeled images, exact no-ops at zero
weights, and exact resume (from last.pt and from a mid-epoch step.pt) with the task active."""

from __future__ import annotations

import pytest
import torch

from effcn.capsules import ALL_CAPSULES, PREDICTED, mask_capsules
from effcn.errors import ConfigError, Interrupted
from effcn.models import create_model
from effcn.training.callbacks import Callback
from effcn.training.checkpoint import load_checkpoint
from effcn.training.config_io import load_config
from effcn.training.metrics import read_metrics
from effcn.training.optim import build_optimizer
from effcn.training.splits import labeled_subset, load_train_val
from effcn.training.tasks import ClassificationTask, SemiSupervisedTask, task_for
from effcn.training.step import TrainStep, epoch_generator
from effcn.training.trainer import Trainer

from helpers import quick_overrides, same_state

SEMI = ["task.name=semi_supervised", "task.args.labeled=20", "task.args.labeled_batch_size=8"]
BOTH_TERMS = SEMI + ["task.args.unlabeled_recon_weight=0.392", "task.args.consistency_weight=1"]


def semi_config(root, out, extra=(), epochs=1, name="semi"):
    return load_config(None, quick_overrides(root, out, epochs=epochs, name=name) + list(extra))


def prepared(config, seed=0):
    """(task, model, step) on the CPU as the trainer builds them, without a run directory."""
    train, val = load_train_val(config, torch.device("cpu"))
    task = task_for(config)
    task.setup(train, val)
    torch.manual_seed(seed)
    model = create_model(config.model.name, **config.model.args)
    task.check_model(model)
    model.train()
    return task, model, TrainStep(model, task, build_optimizer(config, model.parameters()))


def first_batch(task, config):
    g = epoch_generator(config.train.seed, 1, torch.device("cpu"))
    order = task.epoch_order(g)
    return order[:config.train.batch_size], task.train_batch(order[:config.train.batch_size], g)


# ------------------------------------------------------------------------ the labeled subset
def test_labeled_subset_is_class_balanced_fixed_by_its_seed_and_spreads_the_remainder():
    labels = torch.arange(300) % 10
    a = labeled_subset(labels, 23, 10, seed=0)
    assert len(a) == len(set(a.tolist())) == 23 and torch.equal(a, a.sort().values)
    counts = torch.bincount(labels[a], minlength=10).tolist()
    assert counts == [3, 3, 3] + [2] * 7          # 23 = 10 * 2 + 3: the first 3 get one more
    assert torch.equal(a, labeled_subset(labels, 23, 10, seed=0))
    assert not torch.equal(a, labeled_subset(labels, 23, 10, seed=1))


@pytest.mark.parametrize("n, message", [
    (201, "task.args.labeled=201 is more than the 200 training images (those left after the "
          "validation split); lower it, or use 0 for all labeled."),
    (9, "task.args.labeled=9 leaves some of the 10 classes without a labeled image; use at least "
        "10."),
])
def test_a_labeled_count_the_split_cannot_give_is_one_sentence(n, message):
    with pytest.raises(ConfigError) as e:
        labeled_subset(torch.arange(200) % 10, n, 10, seed=0)
    assert str(e.value) == message
    with pytest.raises(ConfigError, match=r"^task.args.labeled=10 needs 5 labeled images of "
                                          r"class 1 but the training split has 2; lower "
                                          r"task.args.labeled\.$"):
        labeled_subset(torch.tensor([0] * 60 + [1, 1]), 10, 2, seed=0)


def test_the_labeled_images_come_from_the_training_split_never_validation(synthetic_root,
                                                                           tmp_path):
    config = semi_config(synthetic_root, tmp_path, SEMI)
    task, _, _ = prepared(config)
    train, val = load_train_val(config, torch.device("cpu"))
    flat = lambda x: [bytes(r.flatten().tolist()) for r in x]  # noqa: E731
    assert len(set(flat(train.images)) | set(flat(val.images))) == len(train) + len(val)
    labeled = set(flat(task.train_x[task.labeled]))
    assert len(labeled) == 20 and not labeled & set(flat(val.images))
    assert torch.bincount(task.train_y[task.labeled], minlength=10).tolist() == [2] * 10
    other = prepared(semi_config(synthetic_root, tmp_path, SEMI + ["task.args.labeled_seed=1"]))[0]
    assert not torch.equal(other.labeled, task.labeled)


# ------------------------------------------------------------------------ batches and terms
def test_a_batch_draws_labeled_images_and_takes_the_whole_pass_unlabeled(synthetic_root,
                                                                         tmp_path):
    config = semi_config(synthetic_root, tmp_path, SEMI + [
        "task.args.unlabeled_recon_weight=1", "data.augment=none"])
    task, _, _ = prepared(config)
    assert task.epoch_size == task.num_train == 200          # an epoch: every training image
    idx, batch = first_batch(task, config)
    rows = batch.rows
    assert (rows.labeled, rows.unlabeled, rows.second) == (slice(0, 8), slice(8, 40), None)
    assert set(batch.y[rows.labeled].tolist()) <= set(range(10))
    assert (batch.y[rows.unlabeled] == PREDICTED).all()      # decoded by the predicted capsule
    assert torch.equal(batch.x[rows.unlabeled], task.train_x[idx].float() / 255)
    labeled_images = {bytes(r.flatten().tolist()) for r in task.train_x[task.labeled]}
    assert all(bytes((r * 255).round().byte().flatten().tolist()) in labeled_images
               for r in batch.x[rows.labeled])
    # a shorter last batch draws proportionally fewer labeled images
    short = task.train_batch(idx[:8], epoch_generator(0, 1, torch.device("cpu")))
    assert short.rows.labeled == slice(0, 2) and len(short.x) == 10


def test_an_unlabeled_only_loss_reaches_the_encoder_and_the_decoder(synthetic_root, tmp_path):
    config = semi_config(synthetic_root, tmp_path, BOTH_TERMS + ["train.recon_weight=0"])
    task, model, _ = prepared(config)
    _, batch = first_batch(task, config)
    out = model(batch.x, task.decoder_labels(batch, training=True))
    _, _, _, unlabeled_recon, consistency = task.loss(model, out, batch)
    (unlabeled_recon + consistency).backward()
    for part in ("stem", "digit_caps", "decoder"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(part)]
        assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0
                                                                   for g in grads), part


@pytest.mark.parametrize("extra, part", [
    (["task.args.unlabeled_recon_weight=0.5"], 4),
    (["task.args.unlabeled_recon_weight=0.5", "task.args.unlabeled_recon_mask=none"], 4),
    (["task.args.consistency_weight=10"], 5),
    (["task.args.consistency_weight=10", "task.args.consistency_on=capsules"], 5),
])
def test_each_term_is_recorded_and_changes_the_loss_and_the_weights(extra, part, synthetic_root,
                                                                    tmp_path):
    """One batch, one initial model: the step with the term's weight against the step with it
    at 0 (same forward, so the same supervised parts)."""
    on = semi_config(synthetic_root, tmp_path, SEMI + extra)
    task, model_on, step_on = prepared(on)
    batch = first_batch(task, on)[1]
    _, model_off, step_off = prepared(semi_config(synthetic_root, tmp_path, SEMI))
    row_on, row_off = step_on(batch), step_off(batch)
    assert row_off[4] == row_off[5] == 0 and row_on[part] > 0 and row_on[9 - part] == 0
    assert torch.equal(row_on[1:3], row_off[1:3])
    weight = task.args.unlabeled_recon_weight if part == 4 else task.args.consistency_weight
    assert (row_on[0] - row_off[0]).item() == pytest.approx(weight * row_on[part].item(), rel=1e-4)
    assert any(not torch.equal(a, b) for a, b in zip(model_on.parameters(),
                                                      model_off.parameters()))


def test_masking_by_the_prediction_or_by_nothing():
    capsules = torch.randn(3, 4, 2)
    capsules[0, 2] *= 10                                     # the longest capsule of row 0
    masked = mask_capsules(capsules, torch.tensor([PREDICTED, ALL_CAPSULES, 1]))
    assert torch.equal(masked[0], mask_capsules(capsules[:1])[0])
    assert torch.equal(masked[1], capsules[1].flatten())
    assert torch.equal(masked[2].view(4, 2)[1], capsules[2, 1])
    assert masked[2].view(4, 2)[[0, 2, 3]].abs().sum() == 0


def test_the_cnn_trains_on_the_labeled_images_alone(synthetic_root, tmp_path):
    cnn = ["model.name=cnn_baseline_tiny"]
    config = semi_config(synthetic_root, tmp_path, SEMI + cnn)
    task, _, step = prepared(config)
    _, batch = first_batch(task, config)
    assert len(batch.x) == 8 and batch.rows.unlabeled is None
    assert step(batch)[4:].tolist() == [0.0, 0.0]
    with pytest.raises(ConfigError, match="model cnn_baseline_tiny has no capsules, so "):
        prepared(semi_config(synthetic_root, tmp_path, SEMI + cnn + [
            "task.args.consistency_weight=1"]))
    with pytest.raises(ConfigError, match="needs a decoder but model efficient_capsnet_tiny "
                                          "has none; drop model.args.decoder=none"):
        prepared(semi_config(synthetic_root, tmp_path, SEMI + [
            "model.args.decoder=none", "task.args.unlabeled_recon_weight=1"]))
    with pytest.raises(ConfigError, match="decodes all capsules at once, but model "
                                          "efficient_capsnet_tiny's decoder reads one capsule"):
        prepared(semi_config(synthetic_root, tmp_path, SEMI + [
            "model.args.decoder_conditioning=embedding", "task.args.unlabeled_recon_weight=1",
            "task.args.unlabeled_recon_mask=none"]))


@pytest.mark.parametrize("extra, message", [
    (["task.args.unlabeled_recon_weight=1"], "task.args.unlabeled_recon_weight needs unlabeled "
     "images but task.args.labeled=0 keeps every label; set task.args.labeled=N or "
     "task.args.unlabeled_recon_weight=0."),
    (["task.args.labeled_batch_size=8"], "task.args.labeled_batch_size applies only with "
     "task.args.labeled=N (with 0 every image of a batch is labeled); set task.args.labeled or "
     "drop it."),
    (["task.args.consistency_weight=1", "data.augment=none"], "task.args.consistency_weight "
     "compares two augmentations of each image but data.augment=none makes them identical; "
     "choose an augmentation (e.g. data.augment=paper) or set task.args.consistency_weight=0."),
    (["task.args.labeled=-1"], "task.args do not make a valid semi_supervised task: labeled must "
     "be at least 0, got -1."),
    (["task.args.consistency_on=routing"], "task.args do not make a valid semi_supervised task: "
     "consistency_on must be one of lengths, capsules, got 'routing'."),
    (["task.args.unlabeled_recon_mask=true"], "task.args do not make a valid semi_supervised "
     "task: unlabeled_recon_mask must be one of predicted, none, got 'True'."),
    (["task.args.labeled=ten"], "--set: task.args.labeled expects an integer, got 'ten'; fix the "
     "value."),
    (["task.args.labelled=10"], "unknown config key task.args.labelled; did you mean "
     "task.args.labeled? valid keys are: consistency_on, consistency_weight, labeled, "
     "labeled_batch_size, labeled_seed, unlabeled_recon_mask, unlabeled_recon_weight."),
    (["data.dataset=multimnist", "data.augment=none", "task.args.labeled=10"],
     "data.dataset=multimnist is the multimnist task's dataset, not semi_supervised's; set "
     "task.name=multimnist."),
])
def test_config_mistakes_are_one_sentence(extra, message, tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(None, quick_overrides(tmp_path, tmp_path) + ["task.name=semi_supervised"]
                    + extra)
    assert str(e.value) == message


# ------------------------------------------------------------------- the loop, exactly
def _weights(run):
    return load_checkpoint(run / "checkpoints" / "last.pt")


def test_zero_weights_train_exactly_as_classification(synthetic_root, tmp_path):
    """With task.args.labeled=0 and both weights 0 the semi-supervised task draws, composes and
    weighs exactly as classification does."""
    semi = ["task.name=semi_supervised", "task.args.consistency_on=capsules",
            "task.args.unlabeled_recon_mask=none"]
    for name, cls, extra in (("classification", ClassificationTask, []),
                             ("semi", SemiSupervisedTask, semi)):
        trainer = Trainer(semi_config(synthetic_root, tmp_path, extra, name=name), quiet=True)
        assert type(trainer.task) is cls
        trainer.fit()
    a, b = (_weights(tmp_path / n) for n in ("classification", "semi"))
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert same_state(a["optimizer"], b["optimizer"])
    rows = [[{k: r[k] for k in ("loss", "margin", "recon", "acc")}
             for r in read_metrics(tmp_path / n / "metrics.jsonl", "batch")]
            for n in ("classification", "semi")]
    assert rows[0] == rows[1]


class _StopAt(Callback):
    """Ctrl-C (as a KeyboardInterrupt) once the record of (epoch, step) is flushed."""

    def __init__(self, epoch, step):
        self.at = (epoch, step)

    def on_batches(self, trainer, records):
        if any((r["epoch"], r["step"]) == self.at for r in records):
            raise KeyboardInterrupt


def _records(run):
    return [{k: v for k, v in r.items() if k not in ("epoch_seconds", "train_images_per_s",
                                                     "images_per_s")}
            for r in read_metrics(run / "metrics.jsonl")]


def test_resume_from_last_and_from_a_mid_epoch_step_is_bit_identical(synthetic_root, tmp_path):
    stateful = BOTH_TERMS + ["train.log_every=1", "train.ema_decay=0.9", "schedule.name=onecycle",
                             "data.train_subset=96", "data.augment=rotate+erase"]  # 3 batches
    runs = {}
    for name, stop, every in (("clean", None, 0), ("from_step", (2, 2), 2),
                              ("from_last", (2, 1), 0)):
        config = semi_config(synthetic_root, tmp_path, stateful + [
            f"run.checkpoint_every_steps={every}"], epochs=2, name=name)
        runs[name] = tmp_path / name
        if stop is None:
            Trainer(config, quiet=True).fit()
            continue
        with pytest.raises(Interrupted, match="continue with effcn train --resume"):
            Trainer(config, quiet=True, callbacks=(_StopAt(*stop),)).fit()
        step_pt = runs[name] / "checkpoints" / "step.pt"
        assert step_pt.exists() == bool(every)
        if every:
            assert load_checkpoint(step_pt)["mid_epoch"]["step"] == 2
        Trainer(config, run_dir=runs[name], resume=True, quiet=True).fit()
    clean = _weights(runs["clean"])
    assert clean["epoch"] == 2
    for name in ("from_step", "from_last"):
        resumed = _weights(runs[name])
        for key in ("epoch", "model", "ema", "optimizer", "scheduler", "best"):
            assert same_state(resumed[key], clean[key]), (name, key)
        assert _records(runs[name]) == _records(runs["clean"]), name
    epoch = read_metrics(runs["clean"] / "metrics.jsonl", "epoch")[-1]
    assert epoch["train_unlabeled_recon"] > 0 and epoch["train_consistency"] > 0
