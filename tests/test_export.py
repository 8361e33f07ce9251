"""effcn export: every registered model as ONNX and TorchScript, named inputs and outputs, a
dynamic batch, the run's evaluated (EMA) weights, checked against PyTorch on real images, atomic
files, and one-sentence errors."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from helpers import assert_one_sentence_error, effcn_in_process
from effcn.models import create_model, input_shape, list_models
from effcn.tools.export import Classifier, Decoder, decoder_path, export_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
TINY = [n for n in list_models() if n.endswith("_tiny")]


def onnx_session(path):
    ort = pytest.importorskip("onnxruntime", reason="ONNX checks need onnxruntime "
                                                    "(pip install 'effcn[export]')")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_graph(fmt, path, *inputs):
    """Run an exported file on tensors; a list of output tensors."""
    if fmt == "onnx":
        session = onnx_session(path)
        feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
        return [torch.from_numpy(o) for o in session.run(None, feeds)]
    result = torch.jit.load(str(path))(*inputs)
    return list(result) if isinstance(result, (tuple, list)) else [result]


def model_cases():
    """(model, format): TorchScript for every registered model; ONNX for the tiny ones, the
    full presets under -m slow (about 3 s each here)."""
    for name in list_models():
        yield pytest.param(name, "torchscript", id=f"{name}-torchscript")
        marks = () if name in TINY else (pytest.mark.slow,)
        yield pytest.param(name, "onnx", id=f"{name}-onnx", marks=marks)


@pytest.mark.parametrize("name,fmt", list(model_cases()))
def test_every_registered_model_exports(name, fmt, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript")
        pytest.importorskip("onnxruntime", reason="ONNX checks need onnxruntime")
    torch.manual_seed(0)
    model = create_model(name).eval()
    c = model.config
    x = torch.rand(4, *input_shape(c))
    has_decoder = getattr(model, "decoder", None) is not None
    labels = torch.arange(4) % c.num_classes if has_decoder else None
    out = tmp_path / f"m.{fmt}"
    graph, dec = export_model(model, fmt, out, x, labels)
    assert graph.max_abs_diff <= 1e-4 and out.is_file()
    assert list(graph.inputs) == ["images"]
    assert list(graph.outputs) == (["class_lengths", "capsules"] if model.has_capsules
                                   else ["class_lengths"])
    # an independent run at another batch size (3): the batch dimension is dynamic
    x3 = torch.rand(3, *input_shape(c))
    with torch.no_grad():
        ref = model(x3)
    got = run_graph(fmt, out, x3)
    assert torch.allclose(got[0], ref.lengths, atol=1e-4)
    if model.has_capsules:
        assert torch.allclose(got[1], ref.capsules, atol=1e-4)
    if has_decoder:
        assert dec.path == decoder_path(out, fmt) and dec.path.is_file()
        labels3 = torch.tensor([c.num_classes - 1, 0, 1])
        recon = run_graph(fmt, dec.path, ref.capsules, labels3)[0]
        with torch.no_grad():
            expected = model.reconstruct(ref.capsules, labels3)
        assert recon.shape == (3, *input_shape(c))
        assert torch.allclose(recon, expected, atol=1e-4)
    else:
        assert dec is None
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_command_on_a_run(tiny_run, tmp_path, capsys, fmt):
    """Named graphs of the run's weights, checked on its test images, difference printed."""
    if fmt == "onnx":
        pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript")
    out = tmp_path / ("model.onnx" if fmt == "onnx" else "model.torchscript.pt")
    code, stdout, stderr = effcn_in_process(
        ["export", tiny_run.path, "--format", fmt, "--out", out, "--decoder", "--images", "20"],
        capsys)
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert f"written: {out}: images (B, 1, 28, 28) -> class_lengths (B, 10), capsules " \
           f"(B, 10, 16)" in lines
    assert "capsules (B, 10, 16), labels (B,) -> reconstruction (B, 1, 28, 28)" in stdout
    diffs = [float(line.split("max abs difference ")[1].split()[0]) for line in lines
             if "max abs difference" in line]
    assert len(diffs) == 2 and all(0 <= d <= 1e-4 for d in diffs)
    assert "on 20 test images" in stdout and "images: uint8 pixels / 255" in stdout

    # the graph on the run's own test images agrees with the checkpoint's model
    from effcn.data.idx import read_idx
    from effcn.training.checkpoint import model_from_checkpoint
    images = torch.from_numpy(read_idx(tiny_run.data_root / "t10k-images-idx3-ubyte.gz")[:30])
    x = images.unsqueeze(1).float() / 255
    model, _ = model_from_checkpoint(tiny_run.path / "checkpoints" / "best.pt")
    with torch.no_grad():
        ref = model.eval()(x)
    lengths, capsules = run_graph(fmt, out, x)
    assert (lengths - ref.lengths).abs().max() <= 1e-4
    assert (capsules - ref.capsules).abs().max() <= 1e-4
    recon = run_graph(fmt, tmp_path / out.name.replace("model", "model_decoder"), capsules,
                      ref.lengths.argmax(1))[0]
    assert (recon - ref.reconstruction).abs().max() <= 1e-4
    if fmt == "onnx":
        import onnx
        meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        session = onnx_session(out)
        assert [i.name for i in session.get_inputs()] == ["images"]
        assert isinstance(session.get_inputs()[0].shape[0], str)  # symbolic batch
    else:
        extra = {"effcn.json": ""}
        torch.jit.load(str(out), _extra_files=extra)
        meta = {"effcn": extra["effcn.json"]}
    info = json.loads(meta["effcn"])
    assert info["model_name"] == "efficient_capsnet_tiny" and info["graph"] == "classifier"
    assert info["input"]["scaling"] == "uint8 pixels / 255" and info["weights"] == "raw"
    assert len(info["class_names"]) == 10


def test_default_paths_and_ema_weights(tiny_run, tmp_path, capsys):
    """Without --out: RUN/export/<checkpoint>.*; the weights are the EMA when the run kept it
    (what effcn eval evaluates), not the optimizer's."""
    from effcn.training.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
    run = tmp_path / "run"
    shutil.copytree(tiny_run.path, run)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    state["ema"] = {k: (v * 0.9 if v.is_floating_point() else v)
                    for k, v in state["model"].items()}
    save_checkpoint(run / "checkpoints" / "last.pt", {k: v for k, v in state.items()
                                                      if k != "format"})
    code, stdout, stderr = effcn_in_process(["export", run, "--format", "torchscript",
                                             "--checkpoint", "last"], capsys)
    assert code == 0, stderr
    path = run / "export" / "last.torchscript.pt"
    assert path.is_file() and f"written: {path}" in stdout and "EMA weights" in stdout
    assert sorted(p.name for p in (run / "export").iterdir()) == ["last.torchscript.pt"]
    model, _ = model_from_checkpoint(run / "checkpoints" / "last.pt")  # loads the EMA
    raw = create_model("efficient_capsnet_tiny")
    raw.load_state_dict(state["model"])
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        ema_out, raw_out = model.eval()(x), raw.eval()(x)
    got = run_graph("torchscript", path, x)
    assert (got[1] - ema_out.capsules).abs().max() <= 1e-5
    assert (got[1] - raw_out.capsules).abs().max() > 1e-3


def test_one_sentence_errors(tiny_run, tmp_path, capsys, monkeypatch):
    cnn = tmp_path / "cnn"
    shutil.copytree(tiny_run.path, cnn)
    from effcn.training.checkpoint import checkpoint_state, load_checkpoint, save_checkpoint
    state = load_checkpoint(cnn / "checkpoints" / "best.pt")
    model = create_model("cnn_baseline_tiny")
    config = {**state["config"], "model": {"name": "cnn_baseline_tiny", "args": {}}}
    save_checkpoint(cnn / "checkpoints" / "best.pt",
                    checkpoint_state(model, config, 1, state["class_names"]))
    from effcn.training.config_io import save_yaml
    save_yaml(config, cnn / "config.yaml")  # a run's files agree (tests/test_run_agreement.py)
    code, _, err = effcn_in_process(["export", cnn, "--format", "torchscript", "--decoder"],
                                    capsys)
    assert_one_sentence_error(code, err, "has no decoder to export")
    assert not (cnn / "export").exists()

    code, _, err = effcn_in_process(["export", tiny_run.path, "--images", "0"], capsys)
    assert_one_sentence_error(code, err, "at least 1 image")

    code, _, err = effcn_in_process(["export", tmp_path / "nowhere"], capsys)
    assert_one_sentence_error(code, err, "does not exist")

    # a missing package: one sentence naming the extra
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    code, _, err = effcn_in_process(["export", tiny_run.path, "--out", tmp_path / "m.onnx"],
                                    capsys)
    assert_one_sentence_error(code, err, "pip install 'effcn[export]'")
    assert "onnxruntime" in err and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("which", ["classifier", "decoder"])
def test_a_graph_that_differs_from_pytorch_is_not_written(tiny_run, tmp_path, capsys,
                                                          monkeypatch, which):
    """The traced graph adds 1e-3 where eager PyTorch does not: refused, and with --decoder
    neither file is written (the classifier's passed its check but waits for the decoder's)."""
    cls = Classifier if which == "classifier" else Decoder
    forward = cls.forward

    def drifting(self, *args):
        out = forward(self, *args)
        shift = 1e-3 if torch.jit.is_tracing() else 0.0
        return (out[0] + shift, *out[1:]) if isinstance(out, tuple) else out + shift

    monkeypatch.setattr(cls, "forward", drifting)
    out = tmp_path / "m.torchscript.pt"
    code, _, err = effcn_in_process(["export", tiny_run.path, "--format", "torchscript",
                                     "--out", out, "--decoder"], capsys)
    assert_one_sentence_error(code, err, "differs from PyTorch by up to 0.001")
    assert "nothing was written" in err and f"m{'_decoder' * (which == 'decoder')}." in err
    assert not list(tmp_path.iterdir())


def test_an_unsupported_model_is_one_sentence(tiny_run, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript")
    pytest.importorskip("onnxruntime", reason="ONNX checks need onnxruntime")

    def data_dependent(self, images):  # Python control flow on a value: torch.export refuses
        out = self.model(images)
        if out.lengths.sum() > 0:
            return out.lengths, out.capsules
        return out.lengths * 2, out.capsules

    monkeypatch.setattr(Classifier, "forward", data_dependent)
    out = tmp_path / "m.onnx"
    code, _, err = effcn_in_process(["export", tiny_run.path, "--out", out], capsys)
    assert_one_sentence_error(code, err, "cannot be exported to ONNX")
    assert "--format torchscript" in err and not out.exists()


def test_decoder_path_names():
    from pathlib import Path
    assert decoder_path(Path("a/best.onnx"), "onnx") == Path("a/best_decoder.onnx")
    assert decoder_path(Path("best.torchscript.pt"), "torchscript") == \
        Path("best_decoder.torchscript.pt")
    assert decoder_path(Path("v1.2.pt"), "torchscript") == Path("v1.2_decoder.pt")
    assert decoder_path(Path("model"), "onnx") == Path("model_decoder")
