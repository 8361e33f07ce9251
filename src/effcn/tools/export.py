"""``effcn export RUN``: a run's classifier (and decoder) as an ONNX or TorchScript graph,
checked against PyTorch on the run's own images before anything is written.

    classifier   images (B, C, H, W) float32 -> class_lengths (B, K), capsules (B, K, D)
                 (the CNN baseline: class_lengths only, its class scores)
    decoder      capsules (B, K, D) float32, labels (B,) int64 -> reconstruction (B, C, H, W)

``images`` are what the model takes: uint8 pixels / data.pixel_divisor (255; the authors' MNIST
256), then the run's evaluation preprocessing where data.augment has one (smallNORB:
standardise, resize to 64, centre 48 crop). The batch dimension is dynamic. The weights are the
ones ``effcn eval`` evaluates (the EMA when the run kept one). Each graph is run (onnxruntime,
``torch.jit.load``) on images of the run's evaluation split at two batch sizes and compared
with the PyTorch model; beyond ``tolerance`` (max abs difference) nothing is written. Files are
written atomically; ONNX metadata (key ``effcn``) and a TorchScript extra file ``effcn.json``
describe the inputs, the scaling, the classes and the run.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from ..capsules import decode_masked
from ..errors import EffcnError
from ..io import atomic_write_bytes
from ..models import input_shape

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}  # format -> default file suffix
METADATA_KEY = "effcn"  # ONNX metadata_props key; TorchScript: the extra file effcn.json
TOLERANCE = 1e-4
ONNX_OPSET = 18


class Classifier(nn.Module):
    """images (B, C, H, W) -> (class_lengths (B, K), capsules (B, K, D)); capsule-free models
    (the CNN baseline) -> (class_lengths,). Holds a copy of the model without its decoder, so
    the graph neither stores nor runs it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model)
        if getattr(self.model, "decoder", None) is not None:
            self.model.decoder = None  # reconstruct() then returns None
        self.has_capsules = getattr(model, "has_capsules", True)

    def forward(self, images: torch.Tensor):
        out = self.model(images)
        return (out.lengths, out.capsules) if self.has_capsules else (out.lengths,)


class Decoder(nn.Module):
    """(capsules (B, K, D), labels (B,) int64) -> reconstruction (B, C, H, W): the model's
    decoder on the capsule of ``labels``, the others zeroed (the model's own masking)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.decoder = copy.deepcopy(model.decoder)

    def forward(self, capsules: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return decode_masked(self.decoder, capsules, labels)


@dataclass
class Graph:
    """One exported file: its path, names and shapes, and how it matched PyTorch."""
    path: Path
    inputs: dict                      # name -> shape, "B" for the dynamic batch
    outputs: dict
    max_abs_diff: float
    checked_on: int                   # images compared, as one batch and the first alone
    runtime: str                      # onnxruntime X | torch.jit.load


@dataclass
class ExportResult:
    format: str
    model_name: str
    checkpoint: Path
    epoch: int
    weights: str                      # "EMA" | "raw"
    split: str
    tolerance: float
    scaling: str
    classifier: Graph
    decoder: Optional[Graph] = None
    metadata: dict = field(default_factory=dict)

    @property
    def graphs(self) -> list[Graph]:
        return [g for g in (self.classifier, self.decoder) if g is not None]


def default_path(run_path: Path, checkpoint: Path, fmt: str) -> Path:
    """RUN/export/<checkpoint stem><suffix>, e.g. RUN/export/best.onnx."""
    from ..training.rundir import RunDir
    return RunDir(run_path).export_dir / f"{checkpoint.stem}{FORMATS[fmt]}"


def decoder_path(out: Path, fmt: str) -> Path:
    """The decoder's file next to the classifier's: best.onnx -> best_decoder.onnx."""
    suffix = FORMATS[fmt] if out.name.endswith(FORMATS[fmt]) else out.suffix
    stem = out.name[: len(out.name) - len(suffix)] if suffix else out.name
    return out.with_name(f"{stem}_decoder{suffix}")


def export_run(run: str | Path, fmt: str = "onnx", out: str | Path | None = None,
               checkpoint: str = "best", decoder: bool = False, split: str = "test",
               images: int = 64, tolerance: float = TOLERANCE,
               overrides: list[str] = ()) -> ExportResult:
    """Export a run's classifier (``decoder=True``: and its decoder, in a second file) as
    ``fmt`` (onnx | torchscript) to ``out`` (default RUN/export/<checkpoint>.onnx or
    .torchscript.pt), verified on the first ``images`` items of ``split`` (test | val; data
    found as ``effcn eval`` finds it, ``overrides`` e.g. data.root=...)."""
    from ..training.evaluate import prepare_run_evaluation
    if images < 1:
        raise EffcnError(f"export needs at least 1 image to check the graph on, got {images}.")
    _check_request(fmt, "", None)  # before the data are loaded
    e = prepare_run_evaluation(run, checkpoint, split, overrides, device="cpu")
    model = e.model.float().eval()
    name = e.state["model_name"]
    _check_request(fmt, name, model if decoder else None)
    if len(e.eval_set) == 0:
        raise EffcnError(f"the {split} split of {e.run.path} is empty, so the exported graph "
                         f"cannot be checked; use --split val or another data.root.")
    batch = e.eval_set.batch(0, min(images, len(e.eval_set)))
    x = batch.x.float().contiguous()
    labels = (batch.y if batch.y.dim() == 1 else batch.y[:, 0]).long()  # MultiMNIST: digit 1
    out = Path(out) if out else default_path(e.run.path, e.checkpoint, fmt)
    cfg = model.config
    scaling = _scaling(e.config)
    metadata = {
        "model_name": name, "model_config": e.state["model_config"],
        "checkpoint": str(e.checkpoint),
        "epoch": e.state["epoch"],
        "weights": "EMA" if e.state.get("ema") is not None else "raw",
        "class_names": e.class_names,
        "input": {"name": "images", "shape": ["B", *input_shape(cfg)],
                  "dtype": "float32", "scaling": scaling},
        "outputs": ["class_lengths", "capsules"] if getattr(model, "has_capsules", True)
        else ["class_lengths"],
        "torch": torch.__version__,
    }
    classifier, dec = export_model(model, fmt, out, x, labels if decoder else None, tolerance,
                                   metadata)
    return ExportResult(fmt, name, e.checkpoint, e.state["epoch"], metadata["weights"], split,
                        tolerance, scaling, classifier, dec, metadata)


def export_model(model: nn.Module, fmt: str, out: str | Path, images: torch.Tensor,
                 labels: Optional[torch.Tensor] = None, tolerance: float = TOLERANCE,
                 metadata: Optional[dict] = None) -> tuple[Graph, Optional[Graph]]:
    """Export ``model`` (eval mode, CPU, fp32) as ``fmt`` to ``out`` and check it on ``images``
    (N, C, H, W) as the model takes them; with ``labels`` (N,) int64 also its decoder, to
    ``decoder_path(out)``, checked on the capsules of ``images``. Returns (classifier graph,
    decoder graph or None). Both files are written only when every graph is within
    ``tolerance``."""
    name = getattr(model, "model_name", type(model).__name__)
    _check_request(fmt, name, model if labels is not None else None)
    metadata = dict(metadata or {"model_name": name})
    exporter = _export_onnx if fmt == "onnx" else _export_torchscript
    out = Path(out)
    classifier = Classifier(model).eval()
    names_out = ["class_lengths", "capsules"] if classifier.has_capsules else ["class_lengths"]
    with torch.no_grad():
        reference = classifier(images)
    done = [exporter(classifier, (images,), ["images"], names_out, reference, out,
                     {**metadata, "graph": "classifier"}, tolerance, name)]
    if labels is not None:
        module = Decoder(model).eval()
        caps = reference[1]
        with torch.no_grad():
            dec_reference = (module(caps, labels),)
        done.append(exporter(module, (caps, labels), ["capsules", "labels"],
                             ["reconstruction"], dec_reference, decoder_path(out, fmt),
                             {**metadata, "graph": "decoder",
                              "input": {"capsules": ["B", *caps.shape[1:]], "labels": ["B"]},
                              "outputs": ["reconstruction"]}, tolerance, name))
    for graph, data in done:  # every graph passed its check: write them (atomically)
        atomic_write_bytes(graph.path, data)
    return done[0][0], (done[1][0] if len(done) > 1 else None)


# ------------------------------------------------------------------------------ formats
def _export_onnx(module, args, names_in, names_out, reference, out, metadata, tolerance,
                 name) -> tuple[Graph, bytes]:
    """The checked graph and the ONNX file's bytes (not written yet)."""
    import onnx
    import onnxruntime as ort
    batch = torch.export.Dim("batch")
    dynamic = {n: {0: batch} for n in names_in}
    with _quiet():
        try:
            program = torch.onnx.export(module, args, dynamo=True, input_names=names_in,
                                        output_names=names_out, dynamic_shapes=dynamic,
                                        opset_version=ONNX_OPSET, verbose=False,
                                        external_data=False)
        except Exception as err:  # torch.onnx.OnnxExporterError and what torch.export raises
            raise EffcnError(f"model {name} cannot be exported to ONNX ({_root_cause(err)}); "
                             f"export it with --format torchscript instead.") from None
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(metadata)})
    data = proto.SerializeToString()
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def run(*inputs):
        feeds = {n: t.numpy() for n, t in zip(names_in, inputs)}
        return [torch.from_numpy(o) for o in session.run(names_out, feeds)]

    diff, n = _compare(run, module, args, reference)
    graph = Graph(out, _shapes(names_in, args), _shapes(names_out, reference), diff, n,
                  f"onnxruntime {ort.__version__}")
    _check(graph, tolerance, name)
    return graph, data


def _export_torchscript(module, args, names_in, names_out, reference, out, metadata, tolerance,
                        name) -> tuple[Graph, bytes]:
    """The checked graph and the TorchScript file's bytes (not written yet)."""
    with _quiet(), torch.no_grad():
        try:
            traced = torch.jit.trace(module, args, check_trace=False)
            buf = io.BytesIO()
            torch.jit.save(traced, buf, _extra_files={f"{METADATA_KEY}.json":
                                                      json.dumps(metadata)})
            data = buf.getvalue()
            loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
        except Exception as err:  # an op or a Python construct tracing cannot record
            raise EffcnError(f"model {name} cannot be exported to TorchScript "
                             f"({_root_cause(err)}); export it with --format onnx instead."
                             ) from None

    def run(*inputs):
        with _quiet(), torch.no_grad():
            result = loaded(*inputs)
        return list(result) if isinstance(result, (tuple, list)) else [result]

    diff, n = _compare(run, module, args, reference)
    graph = Graph(out, _shapes(names_in, args), _shapes(names_out, reference), diff, n,
                  "torch.jit.load")
    _check(graph, tolerance, name)
    return graph, data


# ---------------------------------------------------------------------------- checking
def _compare(run, module, args, reference) -> tuple[float, int]:
    """Max abs difference between the exported graph and PyTorch, on all items as one batch and
    on the first alone (two batch sizes): (difference, items)."""
    worst = 0.0
    single = tuple(a[:1] for a in args)
    with torch.no_grad():
        single_ref = module(*single)
        single_ref = single_ref if isinstance(single_ref, tuple) else (single_ref,)
    for inputs, expected in ((args, reference), (single, single_ref)):
        got = run(*inputs)
        if len(got) != len(expected):
            raise EffcnError(f"the exported graph returned {len(got)} outputs, not "
                             f"{len(expected)}; this is a bug, report it.")
        for g, r in zip(got, expected):
            if tuple(g.shape) != tuple(r.shape):
                raise EffcnError(f"the exported graph returned shape {tuple(g.shape)} where "
                                 f"PyTorch gives {tuple(r.shape)}; this is a bug, report it.")
            worst = max(worst, float((g.float() - r.float()).abs().max()) if r.numel() else 0.0)
    return worst, len(args[0])


def _check(graph: Graph, tolerance: float, name: str) -> None:
    if not graph.max_abs_diff <= tolerance:  # also catches NaN
        raise EffcnError(f"the exported {name} differs from PyTorch by up to "
                         f"{graph.max_abs_diff:.3g} (max abs, {graph.checked_on} images, "
                         f"{graph.runtime}, {graph.path.name}), more than the tolerance "
                         f"{tolerance:g}, so nothing was written; report this, or try the "
                         f"other --format.")


def _check_request(fmt: str, name: str, decoder_of: Optional[nn.Module]) -> None:
    """A known format whose packages are installed; a decoder where one is asked for."""
    if fmt not in FORMATS:
        raise EffcnError(f"unknown export format {fmt!r}; choose onnx or torchscript.")
    if fmt == "onnx":
        _require_onnx()
    if decoder_of is not None and getattr(decoder_of, "decoder", None) is None:
        raise EffcnError(f"model {name} has no decoder to export (a CNN, or decoder=none); "
                         f"drop --decoder.")


def _require_onnx() -> None:
    missing = []
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        many = len(missing) > 1
        raise EffcnError(f"ONNX export needs the {', '.join(missing)} package{'s' * many}; "
                         f"install {'them' if many else 'it'} with pip install "
                         f"'effcn[export]' (or use --format torchscript).")


# ------------------------------------------------------------------------------ helpers
def _scaling(config) -> str:
    from ..data.transforms import build_augment
    from ..training.tasks.classification import eval_transform_of
    text = f"uint8 pixels / {config.data.pixel_divisor:g}"
    if eval_transform_of(build_augment(config.data.augment)) is not None:
        text += f", then the {config.data.augment!r} evaluation preprocessing"
    return text


def _shapes(names, tensors) -> dict:
    return {n: ["B", *t.shape[1:]] for n, t in zip(names, tensors)}


def _root_cause(err: BaseException) -> str:
    """The innermost cause's first line, shortened, without terminal colours."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    for code in ("\x1b[96m", "\x1b[0m", "\x1b[1m"):
        text = text.replace(code, "")
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text[:200].rstrip(".")


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' warnings, log records and prints (the result is checked anyway;
    a failure is reported as one sentence)."""
    disabled = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):  # torch.export prints graphs there
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(disabled)
