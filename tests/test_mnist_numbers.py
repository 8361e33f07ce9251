"""MNIST numbers: composition (labels, shapes, pixels), the fixed test set, validation digits
kept out of training, the epoch, the non-square presets (and the square ones unchanged), config
sentences, and a tiny end-to-end train + eval on the synthetic digits."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from helpers import (REPO, SHARED_MNIST, assert_one_sentence_error, effcn_in_process,
                     numbers_overrides, write_untrained_run)
from effcn.data.numbers import (MNISTNumbers, NumberSet, compose_numbers, epoch_table,
                                number_labels, number_names)
from effcn.errors import ConfigError
from effcn.models import create_model, default_config, input_shape
from effcn.models import count_parameters
from effcn.training.config_io import load_config
from effcn.training.splits import load_test, load_train_val, train_val_split
from effcn.training.tasks import NumbersTask, task_for

@pytest.fixture
def numbers_data(monkeypatch):
    monkeypatch.setattr(MNISTNumbers, "sha256", {})  # the synthetic files are not MNIST's


def digits(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8),
            torch.arange(n) % 10)


def test_labels_names_and_leading_zeros():
    assert number_labels(torch.tensor([[0, 0, 7], [9, 9, 9], [1, 0, 0]])).tolist() == [7, 999, 100]
    assert number_labels(torch.tensor([[3], [8]])).tolist() == [3, 8]
    names = number_names(3)
    assert len(names) == 1000 and names[7] == "007" and names[999] == "999"
    assert number_names(2)[:3] == ["00", "01", "02"] and number_names(1) == list("0123456789")


@pytest.mark.parametrize("k", [1, 2, 3])
def test_composed_pixels_are_the_digits_side_by_side(k):
    images, labels = digits()
    table = torch.tensor([[(i + p) % 12 for p in range(k)] for i in range(5)])
    x, y = compose_numbers(images, labels, table)
    assert x.shape == (5, 1, 28, 28 * k) and x.dtype == torch.uint8
    for i in range(5):
        for p in range(k):
            assert torch.equal(x[i, :, :, 28 * p:28 * (p + 1)], images[table[i, p]])
        assert y[i] == int("".join(str(int(labels[j])) for j in table[i]))


def test_training_batches_compose_fresh_numbers_reproducibly(synthetic_root, tmp_path,
                                                             numbers_data):
    config = load_config(None, numbers_overrides(synthetic_root, tmp_path))
    task = task_for(config)
    assert isinstance(task, NumbersTask)
    train, val = load_train_val(config, "cpu")
    task.setup(train, val)
    order = task.epoch_order(torch.Generator().manual_seed(3))
    assert order.shape == (len(train) // 2, 2) == (task.epoch_size, 2)
    assert len(order.unique()) == order.numel()             # one pass: every digit at most once
    batch = task.train_batch(order[:8], torch.Generator().manual_seed(0))
    assert batch.x.shape == (8, 1, 28, 56) and batch.x.dtype == torch.float32
    assert torch.equal(batch.x[:, :, :, 28:] * 255, train.images[order[:8, 1]].float())
    assert torch.equal(batch.y, train.labels[order[:8, 0]] * 10 + train.labels[order[:8, 1]])
    again = task.epoch_order(torch.Generator().manual_seed(3))
    assert torch.equal(order, again)                        # the epoch's generator fixes it
    assert not torch.equal(order, task.epoch_order(torch.Generator().manual_seed(4)))
    # a longer epoch: several passes, each digit once per pass
    config.task.args["epoch_images"] = 250
    long = NumbersTask(config)
    long.setup(train, val)
    rows = long.epoch_order(torch.Generator().manual_seed(0))
    assert rows.shape == (250, 2) and torch.bincount(rows.flatten()).max() <= 3
    assert task.class_names(train)[42] == "42"


def test_augmentation_is_per_digit_and_follows_the_generator(synthetic_root, tmp_path,
                                                              numbers_data):
    config = load_config(None, numbers_overrides(synthetic_root, tmp_path) +
                         ["data.augment=paper"])
    task = task_for(config)
    train, val = load_train_val(config, "cpu")
    task.setup(train, val)
    idx = torch.arange(16).view(8, 2)
    a, b = (task.train_batch(idx, torch.Generator().manual_seed(5)) for _ in range(2))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)  # resume replays the same batches
    plain = train.images[idx.flatten()].float().div(255)
    assert not torch.equal(a.x[:, :, :, :28], plain[0::2])  # augmented


def test_validation_digits_are_never_trained_on(synthetic_root, tmp_path, numbers_data):
    config = load_config(None, numbers_overrides(synthetic_root, tmp_path))
    train_idx, val_idx = train_val_split(240, config.data.val_size, config.data.split_seed)
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
    train, val = load_train_val(config, "cpu")
    task = task_for(config)
    task.setup(train, val)
    train_digits = {bytes(d.flatten().tolist()) for d in train.images}
    val_digits = {bytes(d.flatten().tolist()) for d in val.images}
    assert not train_digits & val_digits                    # the synthetic digits are unique
    vs = task.val_set()
    assert len(vs) == len(val) == config.data.val_size
    x = vs.batch(0, len(vs)).x.mul(255).round().to(torch.uint8)
    blocks = {bytes(x[i, :, :, 28 * p:28 * (p + 1)].flatten().tolist())
              for i in range(len(x)) for p in range(2)}
    assert blocks == val_digits                             # every val digit, nothing else
    # each validation digit once at each position; training rows index the training digits
    assert all(sorted(c.tolist()) == list(range(len(val))) for c in vs.numbers.table.T)
    assert int(task.epoch_order(torch.Generator().manual_seed(0)).max()) < len(train)


_TEST_SET_HASH = """
import hashlib, sys
from effcn.data.numbers import MNISTNumbers
from effcn.training.config_io import load_config
from effcn.training.splits import load_test
from effcn.training.tasks import task_for
MNISTNumbers.sha256 = {}
config = load_config(None, sys.argv[1:])
s = task_for(config).eval_set(load_test(config, "cpu"), "test")
b = s.batch(0, len(s))
print(hashlib.sha256(b.x.numpy().tobytes() + b.y.numpy().tobytes()).hexdigest())
"""


def test_the_test_set_is_fixed_across_calls_and_processes(synthetic_root, tmp_path,
                                                          numbers_data):
    import hashlib
    overrides = numbers_overrides(synthetic_root, tmp_path)
    config = load_config(None, overrides)
    task = task_for(config)
    test = load_test(config, "cpu")
    a, b = (task.eval_set(test, "test").batch(0, len(test)) for _ in range(2))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    s = task.eval_set(test, "test")
    assert len(s) == len(test) == 80                        # one number per test digit
    assert all(sorted(c.tolist()) == list(range(80)) for c in s.numbers.table.T)
    assert s.describe() == {"images": 80, "digits_per_image": 2, "source_digits": 80,
                            "seed": 0, "drawn": s.describe()["drawn"]}
    assert not torch.equal(s.numbers.table, task.eval_set(test, "val").numbers.table)
    here = hashlib.sha256(a.x.numpy().tobytes() + a.y.numpy().tobytes()).hexdigest()
    proc = subprocess.run([sys.executable, "-c", _TEST_SET_HASH, *overrides],
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == here


@pytest.mark.skipif(not (SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="real MNIST not found")
def test_real_mnist_test_digits_make_their_numbers():
    test = MNISTNumbers(SHARED_MNIST, "test")
    x, y = compose_numbers(test.images[:8].unsqueeze(1), test.labels[:8],
                           torch.tensor([[0, 1, 2], [3, 4, 5]]))
    first = test.labels[:6].tolist()                        # 7, 2, 1, 0, 4, 1
    assert y.tolist() == [first[0] * 100 + first[1] * 10 + first[2],
                          first[3] * 100 + first[4] * 10 + first[5]]
    assert x.shape == (2, 1, 28, 84) and torch.equal(x[0, 0, :, 56:], test.images[2])
    s = NumberSet(test.images, test.labels, 3, 10_000, seed=0)
    assert len(s) == 10_000 and len(torch.bincount(s.batch(0, 10_000)[1])) <= 1000


def test_numbers_presets_take_wide_images():
    for k in (2, 3):
        for name in (f"efficient_capsnet_numbers{k}", f"cnn_baseline_numbers{k}"):
            c = default_config(name)
            assert input_shape(c) == (1, 28, 28 * k) and c.num_classes == 10 ** k
        assert c.feature_shape() == (7, 7 * k)                 # the CNN's map
        cfg = default_config(f"efficient_capsnet_numbers{k}")
        assert cfg.feature_map_shape() == (9, 14 * k - 5)        # 9x23, 9x37
        assert cfg.primary_kernel_shape() == cfg.feature_map_shape()   # covers the whole map
        assert cfg.num_primary_caps() == 16
    # measured against the MNIST preset: only the depthwise kernel and the class count differ
    mnist = count_parameters(create_model("efficient_capsnet_mnist", decoder="none"))
    per_class = 16 * 8 * 16 + 16                            # W[j] and b[j] of one class
    n2 = create_model("efficient_capsnet_numbers2")
    assert n2.primary.conv.kernel_size == (9, 23)
    assert count_parameters(n2, include_decoder=False) == \
        mnist - 128 * 81 + 128 * 9 * 23 + 90 * per_class == 363_712
    with torch.no_grad():
        assert n2.eval()(torch.rand(2, 1, 28, 56)).reconstruction.shape == (2, 1, 28, 56)
    rank16 = create_model("efficient_capsnet_numbers3", caps_rank=16, decoder="none")
    assert sum(p.numel() for n, p in rank16.named_parameters() if n.startswith("digit_caps")) \
        == 16 * 8 * 16 + 1000 * 16 * 16 + 1000 * 16
    assert count_parameters(create_model("cnn_baseline_numbers2")) == \
        28_938 - (32 * 49 * 10 + 10) + 32 * 7 * 14 * 100 + 100


def test_square_presets_and_their_checkpoints_are_unchanged(tmp_path):
    """A checkpoint written before image_width existed (no such key) rebuilds the same model."""
    from effcn.training.checkpoint import checkpoint_state, model_from_checkpoint, save_checkpoint
    torch.manual_seed(0)
    model = create_model("efficient_capsnet_tiny").eval()
    assert model.primary.conv.kernel_size == (9, 9) and model.config.feature_map_size() == 9
    state = checkpoint_state(model, load_config(None), epoch=1)
    del state["model_config"]["image_width"]
    save_checkpoint(tmp_path / "old.pt", state)
    loaded, _ = model_from_checkpoint(tmp_path / "old.pt")
    assert loaded.config == model.config
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x).lengths, model(x).lengths)


@pytest.mark.parametrize("overrides, message", [
    (["task.args.digits=4"], "task.args do not make a valid numbers task: digits must be one of "
                             "1, 2, 3, got 4."),
    ([], "model efficient_capsnet_mnist takes 1x28x28 images of 10 classes; set model.name to "
         "efficient_capsnet_numbers2"),
    (["task.args.digits=3", "model.name=efficient_capsnet_numbers2"],
     "has 1x28x84 images of 1000 classes but model efficient_capsnet_numbers2 takes 1x28x56"),
    (["model.name=cnn_baseline_numbers2", "model.args.num_classes=10"],
     "takes 1x28x56 images of 10 classes"),
    (["model.name=efficient_capsnet_numbers2", "data.augment=place"],
     "data.augment=place does not apply to mnist_numbers"),
    (["task.name=classification"], "data.dataset=mnist_numbers is the numbers task's dataset, not "
                                   "classification's; set task.name=numbers."),
])
def test_config_mistakes_are_one_sentence(overrides, message, capsys):
    overrides = ["data.dataset=mnist_numbers", "task.name=numbers", *overrides]
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(None, overrides)
    code, _, err = effcn_in_process(["train", *(a for o in overrides for a in ("--set", o))],
                                    capsys)
    assert_one_sentence_error(code, err, message)


def test_train_and_eval_end_to_end(synthetic_root, tmp_path, numbers_data, capsys):
    figures = importlib.util.find_spec("PIL") is not None
    overrides = numbers_overrides(synthetic_root, tmp_path / "runs", epochs=2) + [
        f"run.recon_every={int(figures)}"]
    code, out, err = effcn_in_process(["train", *(a for o in overrides for a in ("--set", o))],
                                      capsys)
    assert code == 0, err
    assert "200 train / 40 val digits" in out and "on 80 test numbers" in out
    run = tmp_path / "runs" / "numbers"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_metric"] == "number accuracy" and 0 <= summary["test_acc"] <= 1
    assert (summary["test_images"], summary["test_digits_per_image"]) == (80, 2)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("kind") == "batch"]
    assert steps and all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    if figures:
        assert (run / "recon" / "epoch_002.png").is_file()
    code, out, err = effcn_in_process(["eval", run], capsys)
    assert code == 0, err
    report = json.loads((run / "eval" / "test_best.json").read_text())
    assert report["acc"] == pytest.approx(summary["test_acc"])   # the same fixed numbers
    assert report["digits_per_image"] == 2 and set(report["per_class_acc"]) <= set(number_names(2))
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert state["class_names"] == number_names(2)


def test_predict_refuses_a_numbers_model_in_one_sentence(synthetic_root, tmp_path, capsys):
    run = write_untrained_run(tmp_path / "run", synthetic_root, "efficient_capsnet_tiny",
                              image_width=56, num_classes=100, primary_kernel=0)
    code, _, err = effcn_in_process(["predict", run, tmp_path / "digit.png"], capsys)
    assert_one_sentence_error(code, err, "takes 28x56 images; use effcn eval")
