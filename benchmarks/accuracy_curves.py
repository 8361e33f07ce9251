"""Validation (and monitored test) accuracy of several runs side by side, per epoch and per hour.

    python benchmarks/accuracy_curves.py RUN[=LABEL] ... --out docs/figures/curves.png \\
        [--title TEXT] [--ymin 98.5]

Prints each run's epochs, best validation accuracy and, where train.monitor_test was on, the
best test accuracy over epochs (test-selected) beside the honest test figure of summary.json.
"""

from __future__ import annotations

import argparse

import numpy as np

from effcn.analysis.curves import load_curves, plot_accuracy_comparison
from effcn.analysis.imageio import save_figure
from effcn.training.rundir import RunDir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories, optionally RUN=LABEL")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="")
    p.add_argument("--ymin", type=float, default=None, help="lower end of the accuracy axis (%%)")
    args = p.parse_args()
    curves = {}
    for spec in args.runs:
        path, _, label = spec.partition("=")
        run = RunDir(path)
        c = curves[label or run.name] = load_curves(run.metrics_path)
        s = run.summary()
        test = c["epoch_test_acc"]
        monitored = (f", best monitored test {100 * np.nanmax(test):.2f}% (epoch "
                     f"{int(c['epoch_x'][np.nanargmax(test)])})" if np.isfinite(test).any()
                     else "")
        honest = f", honest test {100 * s['test_acc']:.2f}%" if "test_acc" in s else ""
        print(f"{label or run.name}: {len(c['epoch_x'])} epochs, best val "
              f"{100 * np.nanmax(c['epoch_val_acc']):.2f}%{monitored}{honest}, "
              f"{np.nansum(c['epoch_epoch_seconds']) / 60:.0f} min of training")
    fig = plot_accuracy_comparison(curves, args.title)
    if args.ymin is not None:
        fig.axes[0].set_ylim(bottom=args.ymin)
    print(f"figure: {save_figure(fig, args.out)}")


if __name__ == "__main__":
    main()
