"""Side-by-side comparison of finished runs: ``effcn compare RUN... [--markdown OUT.md]``.

Per run: model, parameters, dataset, epochs, training images per epoch, train seconds per epoch (mean of the epoch records
in metrics.jsonl), inference images/s (measured here, now: see ``inference_images_per_s``),
best validation accuracy, test accuracy, and affNIST accuracy where the run has been evaluated on
it (an ``affnist_acc`` key in one of the run's eval reports, RUN/eval/*.json, written by
``effcn eval``; training's summary.json holds the test figures).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import torch

from ..errors import EffcnError
from ..training.rundir import RunDir

COLUMNS = (("run", "run"), ("model", "model"), ("parameters", "parameters"),
           ("dataset", "dataset"), ("epochs", "epochs"), ("train_images", "train images"),
           ("train_s_per_epoch", "train s/epoch"), ("inference_images_per_s", "inference img/s"),
           ("val_acc", "val acc"), ("test_acc", "test acc"), ("affnist_acc", "affNIST acc"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def inference_images_per_s(model: torch.nn.Module, device: torch.device, batch_size: int = 100,
                           repeats: int = 5, min_seconds: float = 1.0, seed: int = 0) -> float:
    """Median images/s of ``model.eval()`` forward passes on random images of its input shape.

    Two warm-up batches first; then each of ``repeats`` timed rounds runs as many batches as
    fill about ``min_seconds`` (at least one), so fast models are not timed on one tiny call.
    """
    cfg = model.config
    model = model.eval().to(device)
    g = torch.Generator().manual_seed(seed)
    from ..models import input_shape
    x = torch.rand(batch_size, *input_shape(cfg), generator=g)
    x = x.to(device)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(2):
        model(x)
    _sync(device)
    per_batch = (time.perf_counter() - t0) / 2
    batches = max(1, math.ceil(min_seconds / max(per_batch, 1e-6)))
    rates = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(batches):
            model(x)
        _sync(device)
        rates.append(batches * batch_size / (time.perf_counter() - t0))
    return statistics.median(rates)


def affnist_accuracy(run: RunDir, summary: dict):
    """The run's affNIST accuracy if it has one: summary.json, else its eval reports (the
    report of best.pt first)."""
    if isinstance(summary.get("affnist_acc"), (int, float)):
        return float(summary["affnist_acc"])
    reports = run.eval_reports()
    for name in sorted(reports, key=lambda n: (n != "test_best", n)):
        value = reports[name].get("affnist_acc")
        if isinstance(value, (int, float)):
            return float(value)
    return None


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise EffcnError(f"{path} is not valid JSON ({e}); the {what} is damaged, re-run "
                         f"effcn eval or retrain.") from None


def run_row(run: str | Path, device: str | None = None, measure: bool = True,
            batch_size: int = 100, repeats: int = 5) -> dict:
    """One table row for a finished run directory (see the module docstring)."""
    from ..training.metrics import read_metrics
    from ..training.runs import open_run
    run_dir = RunDir.open(run)
    if not run_dir.summary_path.is_file():
        raise EffcnError(f"{run_dir.path} has no summary.json: its training has not finished; "
                         f"wait for it (or effcn train --resume it) and compare finished runs.")
    summary = _read_json(run_dir.summary_path, "run summary")
    epochs = read_metrics(run_dir.metrics_path, kind="epoch")
    seconds = [r["epoch_seconds"] for r in epochs if isinstance(r.get("epoch_seconds"), (int, float))]
    # a run of data.protocol=authors was selected on the test set: every table says so
    marker = " [test-selected]" if str(summary.get("selection", "")).startswith("test-selected") \
        else ""
    row = {"run": run_dir.name + marker, "model": summary.get("model"),
           "parameters": summary.get("parameters"), "dataset": summary.get("dataset"),
           "epochs": len(epochs) or summary.get("epochs"),
           "train_s_per_epoch": statistics.fmean(seconds) if seconds else None,
           "train_images": summary.get("train_images"),
           "val_acc": summary.get("best_val_acc"), "test_acc": summary.get("test_acc"),
           "affnist_acc": affnist_accuracy(run_dir, summary),
           "inference_images_per_s": None, "inference_device": None}
    if measure:
        wanted = device or summary.get("device") or "cpu"
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            wanted = "cpu"  # the run trained on a GPU this machine lacks: say where we measured
        opened = open_run(run_dir.path, "best", wanted)
        row["inference_images_per_s"] = inference_images_per_s(opened.model, opened.device,
                                                               batch_size, repeats)
        row["inference_device"] = str(opened.device)
    return row


def compare_runs(runs, device: str | None = None, measure: bool = True, batch_size: int = 100,
                 repeats: int = 5) -> tuple[list[dict], str]:
    """(one ``run_row`` per run, the note on how inference was measured)."""
    if batch_size < 1 or repeats < 1:
        raise EffcnError("--batch-size and --repeats must be at least 1.")
    rows = [run_row(r, device=device, measure=measure, batch_size=batch_size, repeats=repeats)
            for r in runs]
    return rows, describe_measurement(rows, batch_size, repeats)


def _cell(key: str, value) -> str:
    if value is None:
        return "—"
    if key in ("val_acc", "test_acc", "affnist_acc"):
        return f"{100 * value:.2f}%"
    if key in ("parameters", "train_images"):
        return f"{value:,}"
    if key == "train_s_per_epoch":
        return f"{value:.1f}"
    if key == "inference_images_per_s":
        return f"{value:,.0f}"
    return str(value)


def format_table(rows: list[dict], markdown: bool = False) -> str:
    """The comparison as a Markdown table, or as aligned plain text."""
    header = [title for _, title in COLUMNS]
    body = [[_cell(key, row.get(key)) for key, _ in COLUMNS] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join("---" if i < 2 or i == 3 else "---:" for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(c) for c in col) for col in zip(header, *body)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
                     for cells in [header, *body])


def describe_measurement(rows: list[dict], batch_size: int, repeats: int) -> str:
    devices = sorted({r["inference_device"] for r in rows if r.get("inference_device")})
    if not devices:
        return "inference not measured."
    return (f"val acc: best validation accuracy (the checkpoint evaluated on test); train s/epoch: "
            f"mean over the run's epochs; inference img/s: measured now on {', '.join(devices)} "
            f"({torch.get_num_threads()} CPU threads), batch {batch_size}, median of {repeats} "
            f"timed rounds after warm-up.")
