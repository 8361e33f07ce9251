"""``effcn runs DIR``: the run directories under DIR as a table.

A run directory is any folder with a config.yaml; finished runs are read from summary.json,
unfinished ones from the epoch records of metrics.jsonl. A run whose best.pt does not belong to
it (another model, dataset or task than config.yaml's) is flagged: its status says so and the
sentence is printed under the table.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import EffcnError
from ..training.rundir import RunDir


def find_runs(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise EffcnError(f"{root} is not a folder; pass the folder that holds your runs "
                         f"(run.dir, default runs/).")
    runs = (RunDir(p.parent) for p in root.rglob("config.yaml"))
    return sorted(r.path for r in runs if r.metrics_path.exists() or r.summary_path.exists())


def run_row(run_dir: Path, root: Path) -> dict:
    """name, dataset, model, epochs (done/planned), best val acc, test acc, seconds, status,
    disagreement (why best.pt does not belong to the run, or None)."""
    from ..training.config_io import load_yaml
    from ..training.metrics import read_metrics
    run = RunDir(run_dir)
    cfg = load_yaml(run.config_path)
    epochs = read_metrics(run.metrics_path, kind="epoch")
    row = {"name": str(run_dir.relative_to(root)) if run_dir != root else run_dir.name,
           "dataset": cfg.get("data", {}).get("dataset", "?"),
           "model": cfg.get("model", {}).get("name", "?"),
           "epochs_done": max((r["epoch"] for r in epochs), default=0),
           "epochs": cfg.get("train", {}).get("epochs"),
           "best_val_acc": max((r["val_acc"] for r in epochs
                                if isinstance(r.get("val_acc"), (int, float))), default=None),
           "test_acc": None,
           # sum of epoch times over every session of the run (resumes included)
           "seconds": sum(r.get("epoch_seconds", 0) for r in epochs) or None,
           "status": "unfinished"}
    if run.summary_path.is_file():
        s = run.summary()
        if s:
            test_selected = str(s.get("selection", "")).startswith("test-selected")
            row.update(status="done (test-selected)" if test_selected else "done",
                       test_acc=s.get("test_acc"),
                       best_val_acc=s.get("best_val_acc", row["best_val_acc"]))
            if s.get("wall_seconds") and not s.get("resumed"):
                row["seconds"] = s["wall_seconds"]
    row["disagreement"] = _disagreement(run)
    if row["disagreement"]:
        row["status"] += "; best.pt is not this run's"
    return row


def _disagreement(run: RunDir) -> str | None:
    """Why the run's best.pt does not belong to it (an unreadable one counts), or None."""
    from ..training.runs import disagreement
    try:
        return disagreement(run)
    except EffcnError as e:
        return str(e)


def list_runs(root: str | Path) -> list[dict]:
    root = Path(root)
    return [run_row(d, root) for d in find_runs(root)]


def format_duration(seconds) -> str:
    if not seconds:
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def format_table(rows: list[dict]) -> str:
    head = ("name", "dataset", "model", "epochs", "best val", "test acc", "time", "status")
    body = [(r["name"], r["dataset"], r["model"], f"{r['epochs_done']}/{r['epochs']}",
             "-" if r["best_val_acc"] is None else f"{r['best_val_acc']:.4f}",
             "-" if r["test_acc"] is None else f"{r['test_acc']:.4f}",
             format_duration(r["seconds"]), r["status"]) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip()
             for line in (head, *body)]
    lines += [f"{r['name']}: {r['disagreement']}" for r in rows if r.get("disagreement")]
    return "\n".join(lines)
