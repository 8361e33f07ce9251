"""Bad input and faults: each ends in one clear sentence (exit code 2, no traceback) and nothing
that already exists is damaged. Also divergence handling and SIGKILL + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from effcn.data.idx import write_idx
from effcn.errors import EffcnError, Interrupted
from effcn.training.checkpoint import load_checkpoint
from effcn.training.config_io import load_config
from effcn.training.metrics import read_metrics
from effcn.training.callbacks import Callback
from effcn.training.rundir import RunDir
from effcn.training.trainer import Trainer

from helpers import (asymmetric_images, assert_one_sentence_error, cifar_batch, effcn_in_process,
                     effcn_process, quick_overrides, set_args, snapshot, write_affnist_mat,
                     write_smallnorb, write_synthetic_idx)


def _bad_data(tmp: Path, kind: str) -> Path:
    """A copy of a small IDX dataset with one file damaged in the given way."""
    root = write_synthetic_idx(tmp / f"data_{kind}", n_train=120, n_test=40)
    images = root / "train-images-idx3-ubyte.gz"
    if kind == "truncated":
        import gzip
        raw = gzip.decompress(images.read_bytes())
        images.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    elif kind == "magic":
        import gzip
        raw = bytearray(gzip.decompress(images.read_bytes()))
        raw[0:4] = b"\x12\x34\x08\x03"
        images.write_bytes(gzip.compress(bytes(raw)))
    elif kind == "dims":
        write_idx(images, np.zeros((120, 32, 32), np.uint8))
    elif kind == "count":
        write_idx(images, np.zeros((100, 28, 28), np.uint8))
    elif kind == "gzip":
        images.write_bytes(images.read_bytes()[:200])
    return root


# (case id, how to build the arguments, expected fragment of the one-line error)
CLI_CASES = [
    ("missing data directory", lambda t, run, root: [
        "train", "--set", "data.root=/no/such/dir", "--set", f"run.dir={t}/r",
        "--set", "data.download=false"],  # downloading is the default (and a subprocess would try)
     "MNIST train files"),
    ("truncated IDX", lambda t, run, root: ["train", *set_args(quick_overrides(_bad_data(t, "truncated"), t / "r", 1, "x"))],
     "is truncated"),
    ("wrong IDX magic", lambda t, run, root: ["train", *set_args(quick_overrides(_bad_data(t, "magic"), t / "r", 1, "x"))],
     "magic"),
    ("wrong image size", lambda t, run, root: ["train", *set_args(quick_overrides(_bad_data(t, "dims"), t / "r", 1, "x"))],
     "32x32"),
    ("image/label count mismatch", lambda t, run, root: ["train", *set_args(quick_overrides(_bad_data(t, "count"), t / "r", 1, "x"))],
     "100"),
    ("corrupt gzip", lambda t, run, root: ["train", *set_args(quick_overrides(_bad_data(t, "gzip"), t / "r", 1, "x"))],
     "gzip"),
    ("MNIST checksum mismatch", lambda t, run, root: [
        "train", "--set", "data.dataset=mnist", "--set", f"data.root={root}", "--set", f"run.dir={t}/r"],
     "SHA-256"),
    ("truncated smallNORB file", lambda t, run, root: [
        "train", "--set", "data.dataset=smallnorb", "--set", f"data.root={_bad_smallnorb(t)}",
        "--set", f"run.dir={t}/r"],
     "holds 36852 data bytes but its header (4, 2, 96, 96) needs 73728"),
    ("CIFAR-10 checksum mismatch", lambda t, run, root: [
        "train", "--set", "data.dataset=cifar10", "--set", f"data.root={_bad_cifar(t)}",
        "--set", f"run.dir={t}/r"],
     "is corrupt or a different version: its MD5"),
    ("truncated affNIST .mat", lambda t, run, root: [
        "train", "--set", "data.dataset=affnist", "--set", f"data.root={_bad_affnist(t)}",
        "--set", f"run.dir={t}/r"],
     "1.mat is not a readable MATLAB file"),
    ("unknown config key", lambda t, run, root: ["train", "--set", "train.epoch=3"],
     "did you mean train.epochs?"),
    ("unknown section", lambda t, run, root: ["train", "--set", "optimizer.lr=3"],
     "unknown config section 'optimizer'"),
    ("wrong type", lambda t, run, root: ["train", "--set", "train.batch_size=big"],
     "train.batch_size expects an integer"),
    ("negative lr", lambda t, run, root: ["train", "--set", "optim.lr=-0.001"],
     "optim.lr must be positive"),
    ("batch 0", lambda t, run, root: ["train", "--set", "train.batch_size=0"],
     "train.batch_size must be positive"),
    ("mistyped config file key", lambda t, run, root: ["train", "--config", str(_typo_yaml(t))],
     "unknown config key train.lr"),
    ("checkpoint of another model", lambda t, run, root: [
        "train", "--resume", str(run), "--set", "model.name=efficient_capsnet_mnist"],
     "holds model 'efficient_capsnet_tiny', not 'efficient_capsnet_mnist'"),
    ("checkpoint of another preset", lambda t, run, root: [
        "eval", str(_tampered_checkpoint(t, run))],
     "does not fit model"),
    ("corrupted checkpoint", lambda t, run, root: ["eval", str(_truncated_checkpoint(t, run))],
     "corrupt or truncated"),
    ("pickle with code in a checkpoint", lambda t, run, root: ["eval", str(_evil_checkpoint(t))],
     "refused"),
    ("not a run directory", lambda t, run, root: ["eval", str(t)],
     "has no best checkpoint"),
    ("predict: wrong size", lambda t, run, root: ["predict", str(run), str(_image(t, (32, 32), "L")),
                                                  "--no-preprocess"],
     "is 32x32 pixels but the model takes 28x28"),
    ("predict: float pixels", lambda t, run, root: ["predict", str(run), str(_image(t, (28, 28), "F"))],
     "has pixel format F"),
    ("predict: not an image", lambda t, run, root: ["predict", str(run), str(_text_file(t))],
     "is not a readable image"),
    ("predict: missing file", lambda t, run, root: ["predict", str(run), str(t / "nope.png")],
     "does not exist"),
    ("run directory exists", lambda t, run, root: [
        "train", *set_args(quick_overrides(root, run.parent, 1, run.name))],
     "already exists"),
    ("resume without checkpoint", lambda t, run, root: ["train", "--resume", str(_empty_run(t))],
     "has no checkpoints/last.pt"),
    ("run.dir is a file", lambda t, run, root: [
        "train", *set_args(quick_overrides(root, _a_file(t), 1, "x"))],
     "is a file, not a folder"),
    ("run.dir inside a file", lambda t, run, root: [
        "train", *set_args(quick_overrides(root, _a_file(t) / "runs", 1, "x"))],
     "is a file, not a folder (Not a directory)"),
]


def _a_file(t: Path) -> Path:
    p = t / "a_file"
    p.write_text("not a folder")
    return p


def _bad_smallnorb(t: Path) -> Path:
    """smallNORB in the real file names, the training images cut to half their bytes."""
    import gzip

    root = t / "norb"
    root.mkdir()
    write_smallnorb(root, n=4)
    images = next(root.glob("*training-dat.mat.gz"))
    raw = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    return root


def _bad_cifar(t: Path) -> Path:
    """CIFAR-10's extracted batches in the real layout, with contents that are not the real
    ones (so their MD5s differ)."""
    from effcn.data.cifar10 import CIFAR10
    folder = t / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate(CIFAR10.files["train"] + CIFAR10.files["test"]):
        (folder / name).write_bytes(cifar_batch(4, i)[0])
    return folder.parent


def _bad_affnist(t: Path) -> Path:
    """affNIST's 32 training batches and test file, the first batch cut in half."""
    pytest.importorskip("scipy.io")
    folder = t / "aff" / "affnist"
    (folder / "training_and_validation_batches").mkdir(parents=True)
    for i in range(1, 33):
        write_affnist_mat(folder / "training_and_validation_batches" / f"{i}.mat",
                          asymmetric_images(2, seed=i), np.array([1, 2]))
    write_affnist_mat(folder / "test.mat", asymmetric_images(2), np.array([1, 2]))
    first = folder / "training_and_validation_batches" / "1.mat"
    first.write_bytes(first.read_bytes()[:100])
    return folder.parent


def _typo_yaml(t: Path) -> Path:
    p = t / "typo.yaml"
    p.write_text("train:\n  lr: 0.1\n")
    return p


def _truncated_checkpoint(t: Path, run: Path) -> Path:
    data = (run / "checkpoints" / "best.pt").read_bytes()
    p = t / "cut.pt"
    p.write_bytes(data[: len(data) // 3])
    return p


def _tampered_checkpoint(t: Path, run: Path) -> Path:
    """A tiny-model checkpoint that claims the weights belong to a 5-class model."""
    state = load_checkpoint(run / "checkpoints" / "best.pt")
    state["model_config"]["num_classes"] = 5
    p = t / "other_preset" / "checkpoints" / "best.pt"
    p.parent.mkdir(parents=True)
    torch.save(state, p)
    return p.parent.parent


def _evil_checkpoint(t: Path) -> Path:
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(t / "PWNED"),))

    p = t / "evil.pt"
    torch.save({"format": "effcn-checkpoint-v1", "x": Evil()}, p)
    return p


def _image(t: Path, size, mode) -> Path:
    from PIL import Image
    p = t / f"img_{size[0]}_{mode.replace(';', '')}.{'tiff' if mode == 'F' else 'png'}"
    Image.new(mode, size).save(p)
    return p


def _text_file(t: Path) -> Path:
    p = t / "notes.png"
    p.write_text("this is not an image")
    return p


def _empty_run(t: Path) -> Path:
    p = t / "empty_run"
    p.mkdir()
    return p


def _check_bad_input(tmp_path, tiny_run, monkeypatch, make_args, run_effcn):
    """Build a row's arguments, run them with run_effcn(args) -> (exit code, stderr) from
    tmp_path, and check the shared run and its data are untouched and nothing was created."""
    run, root = tiny_run.path, tiny_run.data_root
    monkeypatch.delenv("EFFCN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.chdir(tmp_path)
    before = snapshot(run, root)
    code, err = run_effcn(make_args(tmp_path, run, root))
    assert snapshot(run, root) == before
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "r" / "x").exists()  # a run that failed to start leaves no folder
    return code, err


@pytest.mark.parametrize("case, make_args, message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_bad_input_is_one_clear_sentence_and_damages_nothing(tmp_path, tiny_run, monkeypatch,
                                                             capsys, case, make_args, message):
    """Every row in this interpreter, through effcn.cli.main."""
    def in_process(args):
        code, _, err = effcn_in_process(args, capsys)
        return code, err

    code, err = _check_bad_input(tmp_path, tiny_run, monkeypatch, make_args, in_process)
    assert_one_sentence_error(code, err, message)


# Rows that also run through a real `python -m effcn`: no traceback reaches the terminal end to
# end (interpreter start, imports, exit status), not only from main().
SUBPROCESS_CASES = [c for c in CLI_CASES if c[0] in ("missing data directory", "unknown config key",
                                                     "corrupted checkpoint")]
assert len(SUBPROCESS_CASES) == 3


@pytest.mark.parametrize("case, make_args, message", SUBPROCESS_CASES,
                         ids=[c[0] for c in SUBPROCESS_CASES])
def test_bad_input_through_a_real_interpreter_prints_no_traceback(tmp_path, tiny_run, monkeypatch,
                                                                  case, make_args, message):
    def in_subprocess(args):
        r = effcn_process(*args, cwd=tmp_path)
        return r.returncode, r.stderr

    code, err = _check_bad_input(tmp_path, tiny_run, monkeypatch, make_args, in_subprocess)
    assert_one_sentence_error(code, err, message)


def test_download_with_wrong_checksum_leaves_nothing(tmp_path):
    """A mirror on 127.0.0.1 serves wrong bytes: DataError, no file, a good file untouched."""
    import functools
    import http.server
    import threading

    from effcn.data.mnist import MNIST
    from effcn.errors import DataError

    served = tmp_path / "served"
    write_synthetic_idx(served, n_train=20, n_test=10)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        class LocalMNIST(MNIST):
            mirrors = [f"http://127.0.0.1:{server.server_address[1]}/"]

        root = tmp_path / "root"
        root.mkdir()
        (root / "keep.txt").write_text("mine")
        os.environ.pop("EFFCN_DATA", None)
        with pytest.raises(DataError) as info:
            LocalMNIST(root=root, split="test", download=True)
        assert "127.0.0.1" in str(info.value) and "\n" not in str(info.value)
        assert sorted(p.name for p in root.rglob("*") if p.is_file()) == ["keep.txt"]
    finally:
        server.shutdown()


def test_archive_member_outside_target_is_refused(tmp_path):
    import io
    import tarfile

    from effcn.data.download import safe_extract_tar
    from effcn.errors import DataError

    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"gotcha"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(DataError, match="escaped.txt"):
        safe_extract_tar(archive, target)
    assert not (tmp_path / "escaped.txt").exists() and not any(target.iterdir())


class _PoisonAfterEpoch(Callback):
    """Sets a weight to NaN after epoch 1, so epoch 2's loss is not finite."""

    def on_epoch_end(self, trainer, record):
        if record["epoch"] == 1:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))


def test_divergence_stops_with_clear_message_and_keeps_last_good_checkpoint(synthetic_root, tmp_path):
    config = load_config(None, quick_overrides(synthetic_root, tmp_path, epochs=3, name="nan"))
    trainer = Trainer(config, quiet=True, callbacks=[_PoisonAfterEpoch()])
    with pytest.raises(EffcnError, match=r"training diverged: the loss became nan at batch 0 in epoch 2"):
        trainer.fit()
    state = load_checkpoint(tmp_path / "nan" / "checkpoints" / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_skip_nonfinite_steps_option(synthetic_root, tmp_path):
    config = load_config(None, quick_overrides(synthetic_root, tmp_path, epochs=1, name="skip") +
                         ["train.skip_nonfinite=true"])
    trainer = Trainer(config, quiet=True)
    task_loss, calls = trainer.task.loss, []

    def nan_at_the_third_step(model, out, batch):
        loss, margin, recon = task_loss(model, out, batch)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 3 else loss), margin, recon

    trainer.task.loss = nan_at_the_third_step
    trainer.fit()
    epoch = read_metrics(tmp_path / "skip" / "metrics.jsonl", "epoch")[0]
    assert epoch["skipped_steps"] == 1 and np.isfinite(epoch["train_loss"])
    batches = read_metrics(tmp_path / "skip" / "metrics.jsonl", "batch")
    assert len(batches) == 7 - 1


class _PoisonAfterLastBatch(Callback):
    """Sets a weight to NaN after epoch 2's last logged batch: every loss stayed finite."""

    def on_batches(self, trainer, records):
        if any(r["epoch"] == 2 and r["step"] == 6 for r in records):
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))


def test_nonfinite_weights_after_a_finite_loss_are_never_saved(synthetic_root, tmp_path):
    config = load_config(None, quick_overrides(synthetic_root, tmp_path, epochs=3, name="nanw"))
    trainer = Trainer(config, quiet=True, callbacks=[_PoisonAfterLastBatch()])
    with pytest.raises(EffcnError, match=r"diverged: a weight became non-finite in epoch 2; the "
                                         r"last good weights \(epoch 1\)"):
        trainer.fit()
    for name in ("last.pt", "best.pt"):
        state = load_checkpoint(tmp_path / "nanw" / "checkpoints" / name)
        assert state["epoch"] == 1
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_kill_between_epoch_record_and_checkpoint_resumes_to_the_same_metrics(
        synthetic_root, tmp_path, monkeypatch):
    """The epoch record is written before last.pt: a run stopped between the two redoes the
    epoch on resume, and its metrics file ends up as an uninterrupted run's."""
    import effcn.training.trainer as trainer_module
    real_save = trainer_module.save_checkpoint

    def save_then_die_at_epoch_2(path, state):
        if state["epoch"] == 2 and path.name == "last.pt":
            raise KeyboardInterrupt  # stands in for a kill at this moment
        real_save(path, state)

    overrides = quick_overrides(synthetic_root, tmp_path, epochs=3, name="cut")
    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_die_at_epoch_2)
    with pytest.raises(Interrupted, match="last.pt holds epoch 1: continue with effcn train "
                                          "--resume"):
        Trainer(load_config(None, overrides), quiet=True).fit()
    assert read_metrics(tmp_path / "cut" / "metrics.jsonl", "epoch")[-1]["epoch"] == 2
    monkeypatch.setattr(trainer_module, "save_checkpoint", real_save)
    config = RunDir(tmp_path / "cut").load_config()
    Trainer(config, run_dir=tmp_path / "cut", resume=True, quiet=True).fit()
    Trainer(load_config(None, quick_overrides(synthetic_root, tmp_path, epochs=3, name="clean")),
            quiet=True).fit()
    keys = ("epoch", "train_loss", "val_loss", "val_acc")
    ea, eb = (read_metrics(tmp_path / n / "metrics.jsonl", "epoch") for n in ("cut", "clean"))
    assert [[e[k] for k in keys] for e in ea] == [[e[k] for k in keys] for e in eb]


# The child trains and SIGKILLs itself from a batch callback once epoch 2 is part-way through:
# a real SIGKILL (no cleanup runs), but at a known step, so a fast machine cannot finish the epoch
# before a watcher in the test notices.
_KILL_MID_EPOCH = """
import json, os, signal, sys
from effcn.training.config_io import load_config
from effcn.training.callbacks import Callback  # noqa: F811
from effcn.training.trainer import Trainer  # noqa: F811

class KillMidEpoch(Callback):
    def on_batches(self, trainer, records):
        if any(r["epoch"] == 2 and r["step"] >= 2 for r in records):
            os.kill(os.getpid(), signal.SIGKILL)

config = load_config(None, json.loads(sys.argv[1]))
Trainer(config, config_name="run", quiet=True, callbacks=(KillMidEpoch(),)).fit()
"""


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(synthetic_root, tmp_path):
    """Bit-exact on CPU: a resumed run redoes the killed epoch from the last epoch checkpoint
    with the same (seed, epoch) generator, so it retraces the uninterrupted run exactly."""
    overrides = quick_overrides(synthetic_root, tmp_path, epochs=3, name="killed") + [
        "train.log_every=1"]
    proc = subprocess.run([sys.executable, "-c", _KILL_MID_EPOCH, json.dumps(overrides)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    metrics = tmp_path / "killed" / "metrics.jsonl"
    records = read_metrics(metrics)
    assert not any(r["kind"] == "epoch" and r["epoch"] >= 2 for r in records), \
        "the run finished epoch 2 before it could be killed"
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["epoch"] == 1

    r = effcn_process("train", "--resume", str(tmp_path / "killed"), "--quiet")
    assert r.returncode == 0, r.stderr
    r = effcn_process("train", *set_args(quick_overrides(synthetic_root, tmp_path, epochs=3,
                                                         name="clean") + ["train.log_every=1"]),
                      "--quiet")
    assert r.returncode == 0, r.stderr

    a = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "clean" / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    ea, eb = (read_metrics(tmp_path / n / "metrics.jsonl", "epoch") for n in ("killed", "clean"))
    keys = ("train_loss", "train_acc", "val_loss", "val_acc")
    assert [[e[k] for k in keys] for e in ea] == [[e[k] for k in keys] for e in eb]
    assert len(read_metrics(tmp_path / "killed" / "metrics.jsonl", "batch")) == 3 * 7


def test_no_file_is_ever_unpickled_freely():
    """Every np.load in src/ passes allow_pickle=False and every torch.load weights_only=True;
    the one unpickler (CIFAR-10's batches, a pickle format) is the restricted one."""
    import re
    src = Path(__file__).resolve().parents[1] / "src" / "effcn"
    unsafe = []
    for path in sorted(src.rglob("*.py")):
        text = path.read_text()
        for call in re.finditer(r"\b(np|numpy|torch)\.load\(", text):
            args = text[call.end():text.find(")", call.end()) + 1]
            safe = "allow_pickle=False" if call[1] != "torch" else "weights_only=True"
            if safe not in args:
                unsafe.append(f"{path.relative_to(src)}: {call[0]}{args}")
        if re.search(r"\bpickle\.(loads?|Unpickler)\b", text) and path.name != "cifar10.py":
            unsafe.append(f"{path.relative_to(src)}: uses pickle")
    assert not unsafe, unsafe
