"""Optuna studies side by side: the best validation accuracy reached against the compute spent.

    python benchmarks/search_comparison.py STUDY_DIR[=LABEL] ... [--out docs/figures/search.png]

Each STUDY_DIR is a search sweep's folder (results.csv and the trials' run folders). Compute is
counted from the trials' own epoch records, pruned ones included: epochs trained and the sum of
their epoch_seconds (training and validation, not process start-up or the final test). Prints a
markdown table and, with --out, plots the best validation accuracy so far against the epochs
trained so far, in trial order.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from effcn.training.metrics import read_metrics


def study_curve(folder: Path) -> dict:
    """Per trial in order: state, params, epochs, epoch seconds, best val; and the totals."""
    with (folder / "results.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["state"] in ("complete", "pruned")]
    trials, seen = [], set()
    for r in sorted(rows, key=lambda r: int(r["trial"])):
        if r["run"] in seen:  # a retried trial continues its folder: count its epochs once
            continue
        seen.add(r["run"])
        epochs = read_metrics(folder / r["run"] / "metrics.jsonl", kind="epoch")
        trials.append({**r, "epochs": len(epochs), "val": float(r["best_val_acc"]),
                       "seconds": sum(e.get("epoch_seconds", 0.0) for e in epochs)})
    return {"trials": trials, "epochs": sum(t["epochs"] for t in trials),
            "seconds": sum(t["seconds"] for t in trials)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="+", help="search sweep folders, optionally DIR=LABEL")
    p.add_argument("--out", default=None, help="write the figure here (PNG)")
    args = p.parse_args()
    curves = {}
    print("| study | complete / pruned | epochs trained | training minutes | best validation "
          "(trial: lr, batch) | its test | trials to reach it |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for spec in args.studies:
        path, _, label = spec.partition("=")
        folder = Path(path)
        c = curves[label or folder.name] = study_curve(folder)
        complete = [t for t in c["trials"] if t["state"] == "complete"]
        best = max(complete, key=lambda t: t["val"])
        reached = next(i for i, t in enumerate(c["trials"], 1) if t["val"] >= best["val"])
        print(f"| {label or folder.name} | {len(complete)} / {len(c['trials']) - len(complete)} | "
              f"{c['epochs']} | {c['seconds'] / 60:.1f} | {100 * best['val']:.2f}% "
              f"(t{best['trial']}: lr {float(best['optim.lr']):.2g}, batch "
              f"{best['train.batch_size']}) | {100 * float(best['test_acc']):.2f}% | {reached} |")
    if args.out:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from effcn.analysis.imageio import save_figure
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for label, c in curves.items():
            xs, ys, spent, best = [0], [None], 0, 0.0
            for t in c["trials"]:
                spent += t["epochs"]
                # A pruned trial's accuracy never counts as the study's result.
                best = max(best, t["val"] if t["state"] == "complete" else 0.0)
                xs.append(spent)
                ys.append(100 * best if best else None)
            ax.step(xs, [y if y is not None else float("nan") for y in ys], where="post",
                    label=label)
        ax.set(xlabel="epochs trained (all trials so far)",
               ylabel="best validation accuracy so far (%)", ylim=(96.5, 98.5))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, args.out)
        print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
