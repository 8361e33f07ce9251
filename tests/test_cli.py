"""End-to-end: the effcn command on a tiny synthetic dataset, and its one-sentence errors."""

import json

import numpy as np
import pytest

from helpers import (REPO, assert_one_sentence_error, effcn_in_process, effcn_process,
                     quick_overrides, set_args)


effcn = effcn_process  # `python -m effcn ARGS` in a fresh interpreter


def test_train_eval_predict_end_to_end(synthetic_root, tmp_path):
    overrides = quick_overrides(synthetic_root, tmp_path / "runs", epochs=2, name="e2e")
    r = effcn("train", "--config", str(REPO / "configs" / "mnist.yaml"), *set_args(overrides))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    run = tmp_path / "runs" / "e2e"
    assert result["run"] == "e2e" and 0 <= result["test_acc"] <= 1

    r = effcn("eval", str(run))
    assert r.returncode == 0, r.stderr
    report = json.loads((run / "eval" / "test_best.json").read_text())
    assert report["images"] == 80 and report["acc"] == pytest.approx(result["test_acc"])
    assert len(report["per_class_acc"]) == 10

    r = effcn("eval", str(run), "--split", "val", "--checkpoint", "last")
    assert r.returncode == 0 and "idx val: accuracy" in r.stdout

    from PIL import Image
    from effcn.data.idx import read_idx
    images = read_idx(synthetic_root / "t10k-images-idx3-ubyte.gz")[:3]
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray(img).save(paths[-1])
    r = effcn("predict", str(run), *map(str, paths), "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 3 and all(len(row["lengths"]) == 10 for row in rows)
    assert all(row["class"] == int(np.argmax(row["lengths"])) for row in rows)

    # resume a finished run for one more epoch
    r = effcn("train", "--resume", str(run), "--set", "train.epochs=3", "--set", "train.progress=false")
    assert r.returncode == 0, r.stderr
    assert "epoch 3/3" in r.stdout
    # the override is what the run's config now says, and the first start's environment is kept
    assert "epochs: 3" in (run / "config.yaml").read_text()
    env = json.loads((run / "env.json").read_text())
    assert "torch" in env and len(env["resumes"]) == 1

    # bad predict inputs: wrong size (when asked to take files as they are), not an image
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "big.png")
    (tmp_path / "notes.png").write_text("not an image")
    for bad, msg in (("big.png", "is 32x32 pixels but the model takes 28x28"),
                     ("notes.png", "is not a readable image")):
        r = effcn("predict", str(run), str(tmp_path / bad), "--no-preprocess")
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args, message", [
    (["train", "--set", "train.batchsize=3"], "did you mean train.batch_size?"),
    (["train", "--set", "optim.lr=-1"], "optim.lr must be positive"),
    (["train", "--config", "nope.yaml"], "config file nope.yaml does not exist"),
    (["train", "--set", "data.root=/nonexistent/dir", "--set", "run.dir=RUNS", "--set",
      "data.download=false"],
     "MNIST train files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz]) not found in /nonexistent/dir"),
    (["train", "--set", "data.root=DATA", "--set", "run.dir=RUNS"],  # download is the default
     "Could not download train-images-idx3-ubyte.gz: https://"),
    (["train", "--data", "/nonexistent/photos"], "/nonexistent/photos does not exist"),
    (["train", "--data", "DATA", "--config", "x.yaml"], "pass one of them"),
    (["train", "--epochs", "3"], "--image-size, --channels and --epochs go with --data"),
    (["train", "--resume", "RUN", "--epochs", "3"],
     "--image-size, --channels and --epochs go with --data"),
    (["eval", "/nonexistent/run"], "run directory /nonexistent/run does not exist"),
])
def test_cli_errors_are_one_sentence_without_traceback(tmp_path, monkeypatch, capsys, args,
                                                      message):
    """In this interpreter, through effcn.cli.main (test_robustness.py runs such rows through a
    real `python -m effcn` too); from tmp_path, as relative paths are read from there."""
    args = [a.replace("RUNS", str(tmp_path / "runs")).replace("DATA", str(tmp_path / "data"))
            for a in args]
    monkeypatch.delenv("EFFCN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.chdir(tmp_path)
    code, _, err = effcn_in_process(args, capsys)
    assert_one_sentence_error(code, err, message)


def test_datasets_command_lists_search_paths(synthetic_root, capsys):
    code, out, _ = effcn_in_process(["datasets", "--root", str(synthetic_root)], capsys)
    assert code == 0
    assert "mnist" in out and "looked in:" in out
    assert f"found in {synthetic_root}" in out  # the idx dataset, in the given root
