"""``effcn sweep FILE.yaml``: grid or random search over config fields and seeds (a ``search:``
section instead runs an Optuna study: tools/search.py).

A sweep file::

    base: ../configs/mnist_cpu.yaml       # config file, relative to the sweep file
    set: [train.epochs=2]                 # overrides applied to every run
    grid:                                 # every combination of these values
      train.recon_weight: [0, 0.392]
      train.batch_size,optim.lr: [[16, 5.0e-4], [64, 2.0e-3]]   # keys that move together
    random:                               # optional: n samples instead of / on top of the grid
      samples: 4
      params: {optim.lr: {log_uniform: [1.0e-4, 1.0e-2]}, train.batch_size: {choice: [16, 32]}}
    seeds: [1, 2]
    workers: 1                            # parallel worker processes
    dir: runs/sweeps/NAME                 # relative to the working directory
    metric: test_acc                      # the plotted metric (a summary.json key)

Every run is a normal run directory under ``dir``; finished runs (with summary.json) are skipped,
interrupted ones resumed, so re-running a sweep continues it. At the end: results.csv (one row
per run), results.md (mean +- sample std over seeds, with n) and a plot of the metric.
"""

from __future__ import annotations

import math
import random
import statistics
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import ConfigError, RunLocked
from ..io import atomic_write_text
from ..training.config_io import load_config, load_yaml
from ..training.rundir import RunDir
from .sweep_runs import (SweepRun, format_value, override, overrides_for, run_command, run_env,
                         threads_per_run, wait_for_writer)

SWEEP_KEYS = {"base", "set", "grid", "random", "search", "seeds", "workers", "dir", "metric"}


def load_sweep(path: str | Path) -> dict:
    """Read and check a sweep file; paths are resolved relative to it."""
    path = Path(path)
    spec = load_yaml(path)
    unknown = set(spec) - SWEEP_KEYS
    if unknown:
        raise ConfigError(f"sweep file {path}: unknown key(s) {', '.join(sorted(unknown))}; valid "
                          f"keys are {', '.join(sorted(SWEEP_KEYS))}.")
    seeds = spec.get("seeds")
    if (not spec.get("grid") and not spec.get("random") and not spec.get("search")
            and not (isinstance(seeds, list) and len(seeds) > 1)):  # seeds alone: one config
        raise ConfigError(f"sweep file {path} has neither grid, random nor search, and not "
                          f"several seeds; add the fields to sweep, e.g. grid: "
                          f"{{train.recon_weight: [0, 0.392]}}, or seeds: [1, 2, 3].")
    spec.setdefault("set", [])
    spec.setdefault("seeds", [42])
    spec.setdefault("workers", 1)
    spec.setdefault("metric", "test_acc")
    spec.setdefault("dir", f"runs/sweeps/{path.stem}")
    if spec.get("base"):
        spec["base"] = str((path.parent / spec["base"]).resolve())
    if not isinstance(spec["workers"], int) or spec["workers"] < 1:
        raise ConfigError(f"sweep file {path}: workers must be a positive integer.")
    if spec.get("search"):
        from .search import check_search
        check_search(spec, path)
        params = spec["search"]["params"]
        for key, dist in params.items():  # every field and value range checked as a config
            for value in (dist.get("choice") or [v for k in ("uniform", "log_uniform", "int")
                                                 for v in dist.get(k, [])]):
                load_config(spec.get("base"), [*spec["set"], override(key, value)])
    return spec


def expand(spec: dict) -> list[SweepRun]:
    """All (params, seed) runs of a sweep, in a fixed order; each checked as a config."""
    combos = [{}]
    for key, values in (spec.get("grid") or {}).items():
        keys = [k.strip() for k in str(key).split(",")]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid entry {key!r} must be a non-empty list of values.")
        axis = []
        for v in values:
            bundle = v if len(keys) > 1 else [v]
            if not isinstance(bundle, list) or len(bundle) != len(keys):
                raise ConfigError(f"grid entry {key!r}: each value must be a list of "
                                  f"{len(keys)} values, got {v!r}.")
            axis.append(dict(zip(keys, bundle)))
        combos = [{**c, **a} for c in combos for a in axis]
    prefixes = [""] * len(combos)
    if spec.get("random"):
        combos, prefixes = _random_combos(spec["random"], combos)
    runs = []
    for prefix, params in zip(prefixes, combos):
        for seed in spec["seeds"]:
            label = "-".join(f"{k.split('.')[-1]}={format_value(v)}" for k, v in params.items())
            runs.append(SweepRun(f"{prefix}{label or 'base'}-seed{seed}", params, int(seed)))
            load_config(spec.get("base"), overrides_for(spec, runs[-1]))  # fail early
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # one folder for two runs would skip the second silently
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"two runs of the sweep would share the run folder {dup}; list each "
                          f"grid value once.")
    return runs


def _random_combos(rand: dict, grid: list[dict]) -> tuple[list[dict], list[str]]:
    """The sampled settings, and a name prefix per setting ("r0-", "r1-", ...): values shown to
    3 digits in run names could otherwise coincide."""
    rng = random.Random(rand.get("seed", 0))
    out, prefixes = [], []
    for i in range(int(rand.get("samples", 1))):
        sample = {}
        for key, dist in (rand.get("params") or {}).items():
            if "choice" in dist:
                sample[key] = rng.choice(dist["choice"])
            elif "uniform" in dist:
                sample[key] = rng.uniform(*map(float, dist["uniform"]))
            elif "log_uniform" in dist:
                lo, hi = map(float, dist["log_uniform"])
                sample[key] = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            else:
                raise ConfigError(f"random param {key!r} needs choice, uniform or log_uniform.")
        out += [{**g, **sample} for g in grid]
        prefixes += [f"r{i}-"] * len(grid)
    return out, prefixes


def run_one(spec: dict, run: SweepRun, threads: int) -> tuple[SweepRun, str]:
    """Train one run in its own process (skipped if finished, resumed if interrupted; a run
    that another process still writes is waited for, or fails naming that process)."""
    run_dir = RunDir(Path(spec["dir"]) / run.name)
    try:
        wait_for_writer(run_dir)
    except RunLocked as e:
        return run, f"failed: {e}"
    if run_dir.summary_path.is_file():
        return run, "skipped (finished)"
    cmd, status = run_command(spec, run)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=run_env(threads))
    if proc.returncode != 0:
        return run, f"failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
    return run, status


def run_sweep(path: str | Path, workers: int | None = None, dry_run: bool = False,
              threads: int | None = None) -> tuple[Path, list[str]]:
    """Run (or continue) a sweep and write its results; returns the results.md path and the
    names of the runs that failed (their rows stay empty; re-running the sweep retries them).
    ``threads``: torch threads per run (see :func:`threads_per_run`)."""
    spec = load_sweep(path)
    workers = workers or spec["workers"]
    threads = threads_per_run(workers, threads)
    if spec.get("search"):
        if dry_run:
            print(f"sweep {path}: an Optuna study of {spec['search']['trials']} trials "
                  f"({spec['search']['sampler']} sampler) over "
                  f"{', '.join(spec['search']['params'])}; storage {spec['search']['storage']}")
            return Path(spec["dir"]) / "results.md", []
        from .search import run_search
        return run_search(spec, workers, threads)
    runs = expand(spec)
    Path(spec["dir"]).mkdir(parents=True, exist_ok=True)
    print(f"sweep {path}: {len(runs)} runs ({len(runs) // len(spec['seeds'])} settings x "
          f"{len(spec['seeds'])} seeds) in {spec['dir']}, {workers} worker(s)", flush=True)
    if dry_run:
        for r in runs:
            print(f"  {r.name}: {' '.join(overrides_for(spec, r)[:-3])}")
        return Path(spec["dir"]) / "results.md", []
    failed = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, (run, status) in enumerate(pool.map(lambda r: run_one(spec, r, threads), runs), 1):
            print(f"[{i}/{len(runs)}] {run.name}: {status}", flush=True)
            if status.startswith("failed"):
                failed.append(run.name)
    return write_results(spec, runs), failed


def write_results(spec: dict, runs: list[SweepRun]) -> Path:
    """results.csv (per run), results.md (mean +- std over seeds) and results.png."""
    out = Path(spec["dir"])
    keys = list(runs[0].params) if runs else []
    rows = []
    for run in runs:
        s = RunDir(out / run.name).summary()
        rows.append({**run.params, "seed": run.seed, "run": run.name,
                     "best_val_acc": s.get("best_val_acc"), "test_acc": s.get("test_acc"),
                     "train_seconds": s.get("train_seconds"), "wall_seconds": s.get("wall_seconds"),
                     spec["metric"]: s.get(spec["metric"])})
    columns = [*keys, "seed", "run", "best_val_acc", "test_acc", "train_seconds", "wall_seconds"]
    if spec["metric"] not in columns:
        columns.append(spec["metric"])
    lines = [",".join(columns)]
    for r in rows:
        lines.append(",".join("" if r.get(c) is None else str(r.get(c)) for c in columns))
    atomic_write_text(out / "results.csv", "\n".join(lines) + "\n")

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    metrics = list(dict.fromkeys(["best_val_acc", "test_acc", spec["metric"], "train_seconds",
                                  "wall_seconds"]))
    md = [f"Sweep `{spec['dir']}`: mean ± sample std over seeds {spec['seeds']} "
          f"(n = finished runs per setting).", "",
          "| " + " | ".join([*keys, "n", *metrics]) + " |",
          "|" + "---|" * (len(keys) + 1 + len(metrics))]
    table = []
    for values, group in groups.items():
        cells, stats = [], {}
        for m in metrics:
            xs = [g[m] for g in group if g.get(m) is not None]
            stats[m] = xs
            cells.append(_mean_std(xs, kind="acc" if m.endswith("acc") else
                                   "seconds" if m.endswith("seconds") else "value"))
        n = len(stats["test_acc"])
        md.append("| " + " | ".join([*map(format_value, values), str(n), *cells]) + " |")
        table.append((values, stats[spec["metric"]]))
    atomic_write_text(out / "results.md", "\n".join(md) + "\n")
    _plot(out / "results.png", keys, table, spec["metric"])
    print("\n".join(md))
    return out / "results.md"


def _mean_std(xs: list, kind: str = "acc") -> str:
    """'mean ± std' of a metric: accuracies in %, seconds whole, other values to 4 digits."""
    if not xs:
        return "—"
    mean = statistics.fmean(xs)
    std = statistics.stdev(xs) if len(xs) > 1 else None
    fmt = {"acc": lambda v: f"{100 * v:.2f}", "seconds": lambda v: f"{v:.0f}"}.get(
        kind, lambda v: f"{v:.4g}")
    text = fmt(mean) + ("%" if kind == "acc" else "")
    return text + (f" ± {fmt(std)}" if std is not None else "")


def _plot(path: Path, keys: list, table: list, metric: str) -> None:
    """Metric against the first swept key (one line per value of the others)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return  # the tables are the result; the plot is a convenience (extra 'viz')
    fig, ax = plt.subplots(figsize=(6, 4))
    lines: dict[tuple, list] = {}
    for values, xs in table:
        if xs:
            lines.setdefault(tuple(values[1:]), []).append((values[0] if values else 0, xs))
    # One categorical x axis shared by every line (the lines may cover different values).
    def order(v):  # numbers in order, then strings
        return isinstance(v, str), v

    xvalues = sorted({p[0] for points in lines.values() for p in points}, key=order)
    position = {v: i for i, v in enumerate(xvalues)}
    for rest, points in lines.items():
        points.sort(key=lambda p: order(p[0]))
        means = [statistics.fmean(p[1]) for p in points]
        errs = [statistics.stdev(p[1]) if len(p[1]) > 1 else 0 for p in points]
        name = ", ".join(f"{k}={format_value(v)}" for k, v in zip(keys[1:], rest)) or metric
        ax.errorbar([position[p[0]] for p in points], means, yerr=errs, marker="o", capsize=3,
                    label=name)
    ax.set_xticks(range(len(xvalues)), [format_value(v) for v in xvalues])
    ax.set_xlabel(keys[0] if keys else "")
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    from ..analysis.imageio import save_figure
    save_figure(fig, path, dpi=120)
