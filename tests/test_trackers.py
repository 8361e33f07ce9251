"""Experiment trackers (run.wandb, run.mlflow), offline: W&B's local run files read back with
its own record format, MLflow's file store read back with MlflowClient; resume continues the
same tracker run; a failed fit marks it; a missing package is one sentence."""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

import pytest

from helpers import assert_one_sentence_error, effcn_in_process, quick_overrides, set_args
from effcn.errors import ConfigError
from effcn.training.callbacks import Callback
from effcn.training.config_io import load_config
from effcn.training.metrics import read_metrics
from effcn.training.trainer import Trainer


def train(root: Path, runs: Path, extra: list[str], epochs: int = 2, name: str = "t",
          callbacks=()) -> dict:
    config = load_config(None, quick_overrides(root, runs, epochs=epochs, name=name) + extra)
    return Trainer(config, quiet=True, callbacks=callbacks).fit()


# ------------------------------------------------------------------------------- W&B
def wandb_records(path: Path):
    """The protobuf records of a W&B run file (run-<id>.wandb): LevelDB's log format (32 KiB
    blocks of [crc32c:4][length:2][type:1] chunks) after a 7-byte header ':W&B', 0xBEE1, 0."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, parts = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # block padding
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(parts + chunk if kind == 4 else chunk)
            yield record
            parts = b""
        else:  # FIRST, MIDDLE
            parts += chunk


def read_wandb_run(folder: Path, timeout: float = 30.0) -> dict:
    """{"run": RunRecord, "config": {...}, "history": [row, ...], "summary": {...}, "exit": code}
    of an offline run folder, once its exit record is on disk: W&B's core process may still be
    writing the file when run.finish() has returned."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            out = _parse_wandb_run(folder)
            if "run" in out and out["exit"] is not None:
                return out
        except Exception:  # a chunk half written: read again
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _parse_wandb_run(folder: Path) -> dict:
    (path,) = folder.glob("run-*.wandb")
    out = {"config": {}, "history": [], "summary": {}, "exit": None}
    for r in wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["run"] = r.run
            out["config"].update({i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                   for i in r.history.item})
        elif kind == "summary":
            out["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                   for i in r.summary.update})
        elif kind == "exit":
            out["exit"] = r.exit.exit_code
    return out


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the W&B tracker needs wandb (pip install 'effcn[wandb]')")
    wandb_dir = tmp_path / "wandb_dir"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return wandb_dir


def test_wandb_logs_what_tensorboard_gets(synthetic_root, tmp_path, wandb_offline):
    summary = train(synthetic_root, tmp_path / "runs", ["run.wandb=true", "run.wandb_project=caps",
                                                        "run.wandb_tags=[tiny, cpu]"])
    run = tmp_path / "runs" / "t"
    ids = json.loads((run / "trackers.json").read_text())["wandb"]
    (folder,) = (wandb_offline / "wandb").glob(f"offline-run-*-{ids['id']}")
    assert not (run / "wandb").exists()  # WANDB_DIR wins over the run directory
    w = read_wandb_run(folder)
    assert (w["run"].project, w["run"].display_name, list(w["run"].tags)) == \
        ("caps", "t", ["tiny", "cpu"])
    config = {k: v.get("value", v) if isinstance(v, dict) else v for k, v in w["config"].items()}
    assert config["train"]["epochs"] == 2 and config["run"]["wandb_tags"] == ["tiny", "cpu"]
    assert config["model"]["name"] == "efficient_capsnet_tiny"

    batches = read_metrics(run / "metrics.jsonl", kind="batch")
    epochs = read_metrics(run / "metrics.jsonl", kind="epoch")
    rows = [h for h in w["history"] if "batch/loss" in h]
    assert [h["trainer/global_step"] for h in rows] == list(range(len(batches)))
    assert [h["batch/loss"] for h in rows] == pytest.approx([b["loss"] for b in batches])
    assert all({"batch/margin", "batch/recon", "batch/acc", "batch/lr"} <= set(h) for h in rows)
    rows = [h for h in w["history"] if "epoch/val_acc" in h]
    assert [h["epoch"] for h in rows] == [1, 2]
    assert [h["epoch/val_acc"] for h in rows] == pytest.approx([e["val_acc"] for e in epochs])
    images = [h["reconstructions/path"] for h in rows]
    assert all((folder / "files" / p).is_file() for p in images)
    assert w["summary"]["test_acc"] == pytest.approx(summary["test_acc"])
    assert w["summary"]["best_epoch"] == summary["best_epoch"] and w["exit"] == 0


def test_wandb_resume_continues_the_run_and_a_failure_is_recorded(synthetic_root, tmp_path,
                                                                  wandb_offline, monkeypatch):
    monkeypatch.delenv("WANDB_DIR")  # then W&B's files go into the run directory
    train(synthetic_root, tmp_path / "runs", ["run.wandb=true"], epochs=1)
    run = tmp_path / "runs" / "t"
    first = json.loads((run / "trackers.json").read_text())["wandb"]["id"]
    assert len(list((run / "wandb").glob(f"offline-run-*-{first}"))) == 1

    class Boom(Callback):
        def on_epoch_end(self, trainer, record):
            raise RuntimeError("boom")

    config = run_config_resumed(run, ["train.epochs=2", "train.progress=false"])
    time.sleep(1.1)  # W&B names offline folders by the second: keep the two runs' apart
    with pytest.raises(RuntimeError, match="boom"):
        Trainer(config, run_dir=run, resume=True, quiet=True, callbacks=(Boom(),)).fit()
    assert json.loads((run / "trackers.json").read_text())["wandb"]["id"] == first
    folders = sorted((run / "wandb").glob(f"offline-run-*-{first}"))
    assert len(folders) == 2 and read_wandb_run(folders[0])["exit"] == 0
    assert read_wandb_run(folders[-1])["exit"] == 1  # the failed fit closed its W&B run


def run_config_resumed(run: Path, overrides: list[str]):
    from effcn.training.config_io import apply_overrides
    from effcn.training.rundir import RunDir
    return apply_overrides(RunDir(run).load_config(), overrides)


# ----------------------------------------------------------------------------- MLflow
@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the MLflow tracker needs mlflow "
                                         "(pip install 'effcn[mlflow]')")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # restored afterwards
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return (tmp_path / "mlruns").as_uri()


def test_mlflow_logs_metrics_params_artifacts_and_resumes(synthetic_root, tmp_path,
                                                          mlflow_store):
    from mlflow.tracking import MlflowClient
    summary = train(synthetic_root, tmp_path / "runs", [f"run.mlflow={mlflow_store}",
                                                        "run.mlflow_experiment=caps"])
    run = tmp_path / "runs" / "t"
    run_id = json.loads((run / "trackers.json").read_text())["mlflow"]["run_id"]
    client = MlflowClient(tracking_uri=mlflow_store)
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED" and r.info.run_name == "t"
    assert client.get_experiment(r.info.experiment_id).name == "caps"
    assert r.data.params["train.epochs"] == "2"
    assert r.data.params["model.name"] == "efficient_capsnet_tiny"
    assert r.data.tags["effcn.run_dir"] == str(run)

    batches = read_metrics(run / "metrics.jsonl", kind="batch")
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "batch/loss"))
    assert [step for step, _ in history] == list(range(len(batches)))
    assert [value for _, value in history] == pytest.approx([b["loss"] for b in batches])
    for key in ("batch/margin", "batch/recon", "batch/acc", "batch/lr"):
        assert len(client.get_metric_history(run_id, key)) == len(batches)
    epochs = read_metrics(run / "metrics.jsonl", kind="epoch")
    val = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "epoch/val_acc"))
    assert [step for step, _ in val] == [e["epoch"] for e in epochs] == [1, 2]
    assert [value for _, value in val] == pytest.approx([e["val_acc"] for e in epochs])
    assert r.data.metrics["test_acc"] == pytest.approx(summary["test_acc"])
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "summary.json", "reconstructions"} <= artifacts
    assert {a.path for a in client.list_artifacts(run_id, "reconstructions")} == \
        {"reconstructions/epoch_001.png", "reconstructions/epoch_002.png"}
    logged = json.loads(Path(client.download_artifacts(run_id, "summary.json",
                                                       str(tmp_path))).read_text())
    assert logged["test_acc"] == summary["test_acc"]

    # resume for one more epoch: the same MLflow run grows, the changed parameter stays
    config = run_config_resumed(run, ["train.epochs=3"])
    Trainer(config, run_dir=run, resume=True, quiet=True).fit()
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED" and r.data.params["train.epochs"] == "2"
    val = sorted(m.step for m in client.get_metric_history(run_id, "epoch/val_acc"))
    assert val == [1, 2, 3]
    assert len(client.search_runs([r.info.experiment_id])) == 1


def test_mlflow_marks_a_failed_fit(synthetic_root, tmp_path, mlflow_store):
    from mlflow.tracking import MlflowClient

    class Boom(Callback):
        def on_epoch_end(self, trainer, record):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        train(synthetic_root, tmp_path / "runs", [f"run.mlflow={mlflow_store}"], epochs=1,
              callbacks=(Boom(),))
    run_id = json.loads((tmp_path / "runs" / "t" / "trackers.json").read_text())["mlflow"]
    assert MlflowClient(tracking_uri=mlflow_store).get_run(run_id["run_id"]).info.status == \
        "FAILED"


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("switch,package", [("run.wandb=true", "wandb"),
                                            ("run.mlflow=file:///tmp/nowhere", "mlflow")])
def test_a_missing_package_is_one_sentence(synthetic_root, tmp_path, capsys, monkeypatch,
                                           switch, package):
    monkeypatch.setitem(sys.modules, package, None)
    runs = tmp_path / "runs"
    code, _, err = effcn_in_process(["train", *set_args(quick_overrides(synthetic_root, runs)
                                                        + [switch])], capsys)
    assert_one_sentence_error(code, err, f"pip install 'effcn[{package}]'")
    assert not (runs / "quick").exists()  # refused before the run directory was made


@pytest.mark.parametrize("override,message", [
    ("run.wandb_tags=['']", "run.wandb_tags must be non-empty tags"),
    ("run.wandb_tags=[" + "x" * 65 + "]", "at most 64 characters"),
    ("run.wandb_tags=mnist", "run.wandb_tags expects a list"),
])
def test_tracker_fields_are_validated(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(None, [override])


def test_tracker_fields_load_from_yaml(tmp_path):
    (tmp_path / "c.yaml").write_text("run:\n  wandb: true\n  wandb_tags: [mnist, cpu]\n"
                                     "  mlflow: sqlite:///tmp/mlflow.db\n")
    run = load_config(tmp_path / "c.yaml").run
    assert run.wandb and run.wandb_tags == ("mnist", "cpu") and run.mlflow.startswith("sqlite")
    assert run.wandb_project == "effcn" and run.mlflow_experiment == "effcn"
