"""summary.json: a finished run's test figures inside its statistics, written once by training.

The Trainer evaluates the best-validation weights on the test split once (trainer.finish); this
module turns that evaluation and the run's state into the summary, and the lines it prints.
"""

from __future__ import annotations

import time
from datetime import datetime

from ..io import write_json
from ..models import count_parameters
from . import fastpath
from .metrics import read_metrics
from .rundir import RunDir
from .splits import TEST_SELECTED
from .state import TrainState


def selects_on_test(config) -> bool:
    """data.protocol=authors: epochs are selected on the test split (no validation split)."""
    return config.data.protocol == "authors"


def test_figures(task, result: dict, test_set, test_amp_dtype, n_val: int) -> dict:
    """The test_* fields of summary.json from one evaluation of the test split."""
    return {"test_acc": result["acc"], "test_metric": task.metric,
            "test_loss": result["loss"], "test_margin": result["margin"],
            "test_recon": result["recon"],
            **{f"test_{k}": v for k, v in test_set.describe().items()},
            "test_precision": fastpath.precision_name(test_amp_dtype), "val_images": n_val}


def test_selected_figures(config, run: RunDir) -> dict:
    """With train.monitor_test: the best per-epoch test accuracy (ties: the earliest epoch),
    read back from metrics.jsonl so that a resumed run counts every epoch."""
    if not config.train.monitor_test or selects_on_test(config):
        return {}
    rows = [r for r in read_metrics(run.metrics_path, kind="epoch") if "test_acc" in r]
    if not rows:
        return {}
    best = max(rows, key=lambda r: (r["test_acc"], -r["epoch"]))
    return {"test_selected_acc": best["test_acc"], "test_selected_epoch": best["epoch"],
            "test_selected_note": f"{TEST_SELECTED} on this run's per-epoch test figures "
                                  f"(train.monitor_test); selection stayed on validation"}


def write_summary(run: RunDir, config, task, state: TrainState, device, test: dict,
                  train_seconds: float, started: datetime, wall_start: float,
                  resumed: bool) -> dict:
    """summary.json: the test figures of ``test`` inside the run's statistics.

    ``started``/``wall_start``: when this fit() call began (datetime, perf_counter())."""
    model = state.model
    summary = {
        "run": run.name, "run_dir": str(run.path), "task": task.name,
        "model": model.model_name, "dataset": config.data.dataset,
        "epochs": config.train.epochs, "best_epoch": state.best["epoch"],
        "best_val_acc": state.best["val_acc"], **test, "train_images": state.data.n_train,
        "train_seconds": train_seconds, "parameters": count_parameters(model),
        "parameters_without_decoder": count_parameters(model, include_decoder=False),
        "device": str(device), "precision": state.precision,
        "cuda_graph": state.graph is not None,  # train.cuda_graph: the step replayed as a graph
        "weights": f"EMA (decay {config.train.ema_decay})" if state.ema else "raw",
        # wall time of this fit() call: data loading, training, test evaluation
        "wall_seconds": time.perf_counter() - wall_start,
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now().isoformat(timespec="seconds"),
        "resumed": resumed,
        "protocol": config.data.protocol,
        "selection": TEST_SELECTED if selects_on_test(config) else "validation split",
    }
    if state.data.train.notes:  # what a folder dataset held out or skipped (data/folder.py)
        summary["data_notes"] = state.data.train.notes
    write_json(run.summary_path, summary)
    return summary


def summary_lines(summary: dict, task, n_test: int) -> list[str]:
    """What training prints about the test figures of ``summary``."""
    tag = f" [{TEST_SELECTED}]" if summary["selection"] == TEST_SELECTED else ""
    lines = [f"test {task.metric}{tag} (best val epoch {summary['best_epoch']}): "
             f"{summary['test_acc']:.4f} on {n_test} test {task.set_items} "
             f"({summary['test_precision']})"]
    if "test_selected_acc" in summary:
        lines.append(f"best epoch on test ({TEST_SELECTED}, from train.monitor_test): "
                     f"{summary['test_selected_acc']:.4f} (epoch {summary['test_selected_epoch']})")
    return lines
