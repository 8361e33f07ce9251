"""The tables and figures of EXPERIMENTS.md questions 6 (few labels + self-supervision) and 7 (more
classes), from the sweeps' run folders.

    python experiments/questions.py SWEEPS_DIR [--figures docs/figures]

SWEEPS_DIR holds the folders the sweep files name (semi_labels, semi_labels_long,
semi_labels_cnn, numbers1, numbers2, numbers3, numbers_cnn); the runs are read from their run
folders (config.yaml, summary.json), so unfinished sweeps give what they have. Prints markdown tables (test accuracy
mean ± sample std over seeds, n, training seconds, parameters, test reconstruction MSE) and writes
few_labels.png and many_classes.png (and, with --recon, the reconstructions of two 1,000-class
runs side by side). n counts the finished runs.
"""

from __future__ import annotations

import argparse
import functools
import statistics
from pathlib import Path

from effcn.training.rundir import RunDir
from effcn.training.tasks import task_args

LABELS = (100, 600, 1000, 6000)
SEMI_ARMS = {  # (sweep, unlabeled_recon_weight, consistency_weight) -> column
    ("semi_labels", 0.0, 0.0): "supervised",
    ("semi_labels", 0.392, 0.0): "+ reconstruction",
    ("semi_labels", 0.0, 1.0): "+ consistency",
    ("semi_labels", 0.392, 1.0): "+ both",
    ("semi_labels_long", None, None): "supervised, 2x steps",
    ("semi_labels_cnn", None, None): "CNN",
}
CLASS_VARIANTS = {  # (caps_rank, decoder, decoder_conditioning) -> row
    (0, "fc", "masked"): "full W, masked decoder (the paper)",
    (0, "none", "masked"): "full W, no decoder",
    (0, "fc", "embedding"): "full W, embedding decoder",
    (4, "fc", "masked"): "rank 4, masked decoder",
    (16, "fc", "masked"): "rank 16, masked decoder",
    (32, "fc", "masked"): "rank 32, masked decoder",
}


@functools.lru_cache(maxsize=None)
def read_sweep(sweeps: Path, name: str) -> list[dict]:
    """The finished runs of a sweep folder, each as {"config": Config, "summary": dict} (read
    from the run folders, so a sweep still running gives its finished runs)."""
    folder = sweeps / name
    runs = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if RunDir.is_run(path) and RunDir(path).summary_path.is_file():
            run = RunDir(path)
            runs.append({"config": run.load_config(), "summary": run.summary()})
    return runs


def mean_std(xs: list, scale: float = 100.0, digits: int = 2) -> str:
    if not xs:
        return "—"
    m = statistics.fmean(xs) * scale
    s = f" ± {statistics.stdev(xs) * scale:.{digits}f}" if len(xs) > 1 else ""
    return f"{m:.{digits}f}{s}"


def few_labels(sweeps: Path) -> dict:
    """{column: {N: [summary, ...]}} of question 6."""
    out = {arm: {n: [] for n in LABELS} for arm in SEMI_ARMS.values()}
    for (sweep, recon, cons), arm in SEMI_ARMS.items():
        for r in read_sweep(sweeps, sweep):
            a = task_args(r["config"])
            if recon is not None and (a.unlabeled_recon_weight, a.consistency_weight) != (recon, cons):
                continue
            out[arm][a.labeled].append(r["summary"])
    return out


def many_classes(sweeps: Path) -> dict:
    """{row: {classes: [summary, ...]}} of question 7 (the CNN as one more row)."""
    out = {v: {10 ** k: [] for k in (1, 2, 3)} for v in [*CLASS_VARIANTS.values(), "CNN"]}
    for k in (1, 2, 3):
        for r in read_sweep(sweeps, f"numbers{k}"):
            args = r["config"].model.args
            key = (args["caps_rank"], args["decoder"], args["decoder_conditioning"])
            out[CLASS_VARIANTS[key]][10 ** k].append(r["summary"])
    for r in read_sweep(sweeps, "numbers_cnn"):
        out["CNN"][10 ** task_args(r["config"]).digits].append(r["summary"])
    return out


def few_labels_tables(data: dict) -> str:
    arms = list(data)
    lines = ["| labels | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
    for n in LABELS:
        cells = [f"{mean_std([s['test_acc'] for s in data[a][n]])} (n={len(data[a][n])})"
                 for a in arms]
        lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
    lines += ["", "Training seconds per run (mean over all label counts and seeds):", "",
              "| " + " | ".join(arms) + " |", "|---" * len(arms) + "|",
              "| " + " | ".join(mean_std([s["train_seconds"] for n in LABELS for s in data[a][n]],
                                         scale=1, digits=0) for a in arms) + " |"]
    return "\n".join(lines)


def many_classes_tables(data: dict) -> str:
    classes = (10, 100, 1000)
    lines = ["Test number accuracy (%), mean ± std (n):", "",
             "| model | " + " | ".join(f"{c:,} classes" for c in classes) + " |",
             "|---" * (len(classes) + 1) + "|"]
    for row, by in data.items():
        lines.append(f"| {row} | " + " | ".join(
            f"{mean_std([s['test_acc'] for s in by[c]])} ({len(by[c])})" for c in classes) + " |")
    lines += ["", "Parameters (with the decoder) / test reconstruction MSE / training seconds:",
              "", "| model | " + " | ".join(f"{c:,} classes" for c in classes) + " |",
              "|---" * (len(classes) + 1) + "|"]
    for row, by in data.items():
        cells = []
        for c in classes:
            runs = by[c]
            if not runs:
                cells.append("—")
                continue
            recon = [s["test_recon"] for s in runs if s.get("test_recon")]
            cells.append(f"{runs[0]['parameters']:,} / "
                         + (f"{statistics.fmean(recon):.4f}" if recon else "no decoder") + " / "
                         + mean_std([s["train_seconds"] for s in runs], scale=1, digits=0) + " s")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(few: dict, many: dict, figures: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from effcn.analysis.imageio import save_figure

    def line(ax, xs, groups, label, **kw):
        pts = [(x, [100 * s["test_acc"] for s in g]) for x, g in zip(xs, groups) if g]
        if not pts:
            return
        x, ys = zip(*pts)
        ax.errorbar(x, [statistics.fmean(y) for y in ys],
                    yerr=[statistics.stdev(y) if len(y) > 1 else 0 for y in ys],
                    label=label, marker="o", capsize=3, **kw)

    def figure(series: dict, xs: tuple, dashed: tuple, path: Path, **labels):
        """One line per series ({name: {x: [summary, ...]}}) of test accuracy against xs."""
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for name, by in series.items():
            line(ax, xs, [by[x] for x in xs], name, linestyle="--" if name in dashed else "-")
        ax.set(xscale="log", **labels)
        ax.set_xticks(xs, [f"{x:,}" for x in xs])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, path)

    figure(few, LABELS, ("CNN", "supervised, 2x steps"), figures / "few_labels.png",
           xlabel="labeled training images (of 12,000)", ylabel="MNIST test accuracy (%)",
           title="Few labels: 375 batches (2x steps: 750), mean ± std, 3 seeds")
    figure(many, (10, 100, 1000), ("CNN",), figures / "many_classes.png",
           xlabel="classes (MNIST numbers of 1, 2, 3 digits)",
           ylabel="test number accuracy (%)",
           title="More classes: 96,000 digit presentations, 2 seeds")


def mean_image_mse(k: int) -> float:
    """MSE of predicting every test number of k digits as the mean test number: the error a
    decoder that learned only the average image has (the data from $EFFCN_DATA)."""
    import torch
    from effcn.training.config_io import load_config
    from effcn.training.splits import load_test
    from effcn.training.tasks import task_for
    model = {1: "efficient_capsnet_mnist"}.get(k, f"efficient_capsnet_numbers{k}")
    config = load_config(None, ["data.dataset=mnist_numbers", "task.name=numbers",
                                f"task.args.digits={k}", f"model.name={model}"])
    test = task_for(config).eval_set(load_test(config, torch.device("cpu")), "test")
    x = test.batch(0, len(test)).x
    return ((x - x.mean(dim=0, keepdim=True)) ** 2).mean().item()


def reconstruction_pair(masked_run: Path, embedding_run: Path, out: Path) -> None:
    """The first 16 validation numbers and their reconstructions from two runs' figures
    (``effcn visualize RUN --what recon`` writes RUN/figures/reconstructions.png), one above the
    other, each titled with its decoder and test reconstruction MSE."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from effcn.analysis.imageio import save_figure
    fig, axes = plt.subplots(2, 1, figsize=(12, 5.2))
    for ax, run, what in zip(axes, (masked_run, embedding_run), (
            "masked decoder (the paper: n_classes x 16 inputs)",
            "embedding decoder (the kept capsule + a class embedding: 32 inputs)")):
        image = plt.imread(RunDir(run).figures / "reconstructions.png")
        ax.imshow(image[: image.shape[0] // 2], cmap="gray")  # two rows of numbers over their decodings
        ax.set_axis_off()
        ax.set_title(f"{what}: test reconstruction MSE {RunDir(run).summary()['test_recon']:.4f}",
                     fontsize=10)
    save_figure(fig, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweeps", type=Path, help="the folder holding the sweeps' folders")
    p.add_argument("--figures", type=Path, default=None, help="write the two figures here")
    p.add_argument("--recon", nargs=2, type=Path, metavar=("MASKED_RUN", "EMBEDDING_RUN"),
                   help="also write reconstructions_1000_classes.png (into --figures) from "
                        "these runs' reconstruction figures")
    p.add_argument("--mean-image-mse", action="store_true",
                   help="also print the MSE of the mean test image at 1, 2, 3 digits (the "
                        "reconstruction error to beat; reads MNIST from $EFFCN_DATA)")
    args = p.parse_args()
    few, many = few_labels(args.sweeps), many_classes(args.sweeps)
    print("## Question 6: few labels\n")
    print(few_labels_tables(few))
    print("\n## Question 7: more classes\n")
    print(many_classes_tables(many))
    if args.mean_image_mse:
        print("\nMSE of the mean test image: " + ", ".join(
            f"{10 ** k:,} classes {mean_image_mse(k):.4f}" for k in (1, 2, 3)))
    if args.figures:
        plot(few, many, args.figures)
        print(f"\nfigures: {args.figures / 'few_labels.png'}, {args.figures / 'many_classes.png'}")
        if args.recon:
            reconstruction_pair(*args.recon, args.figures / "reconstructions_1000_classes.png")


if __name__ == "__main__":
    main()
