"""The GPU check: what effcn costs on a lent GPU, in one call of under 8 minutes.

    bash benchmarks/gpu_check.sh --data-root .devdata/mnist --out $OUT/gpu_check.json  # on a GPU
    bash benchmarks/gpu_check.sh --smoke --data-root DIR   # anywhere: tiny model, CPU, seconds

Each part runs only when its estimate fits what is left of ``--budget-minutes``, and a part (or
one speed row) that fails is recorded with its traceback while the others still run: one call
on a lent GPU brings back every figure it can (on 2026-12-04 on an H200: 180 s for all five).

Prints one log and writes one JSON report (``--out``) with:

1. ``speed``: effcn's training step (effcn bench's, training.step.TrainStep) eager and as one CUDA
   graph (train.cuda_graph) at batch 16, 32 and 256: seconds per 55,000-image epoch, peak memory,
   kernels run and launch calls per step and the GPU's busy fraction (torch.profiler; on the CPU
   the dispatched-kernel count of bench.count_kernels instead), synthetic data;
2. ``time_to_accuracy``: configs/mnist_cpu.yaml's recipe at batch 256 (lr scaled linearly), the
   honest protocol: epochs selected on VALIDATION, the test split logged every epoch
   (train.monitor_test), the time until the validation-selected epoch's test accuracy reaches
   99.6%, up to --max-minutes of training;
3. ``long_recipe``: configs/mnist_long_cpu.yaml end to end (its honest test accuracy, minutes);
4. ``sweep``: ``effcn sweep --workers N`` with N seeds of one short config beside one seed alone
   (seconds of each), i.e. what N runs side by side on one GPU cost;
5. ``peers``: the two public ports, each with its own pipeline, where their code was copied to
   .devdata/peers/ (benchmarks/peers.py; a missing one is skipped, saying so);
6. the machine: GPU name, torch and CUDA versions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from effcn.io import write_json
from effcn.tools.bench import BenchSettings, EffcnContender, device_profile, run_bench
from effcn.training.config_io import load_config, save_yaml
from effcn.training.metrics import read_metrics
from effcn.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.996


def say(line: str) -> None:
    print(line, flush=True)


def speed(model: str, device: str, batches, modes, steps: int, repeats: int) -> list[dict]:
    """One row per (batch, mode): seconds per MNIST epoch, memory, kernels, busy fraction."""
    rows = []
    for batch in batches:
        for mode in modes:
            try:
                rows.append(speed_row(model, device, batch, mode, steps, repeats))
            except Exception:  # noqa: BLE001 -- the graph may fail where eager works: keep both
                rows.append({"batch": batch, "mode": mode, "error": traceback.format_exc()[-3000:]})
                say(f"batch {batch:>4} {mode:<6} FAILED\n{rows[-1]['error']}")
    return rows


def speed_row(model: str, device: str, batch: int, mode: str, steps: int, repeats: int) -> dict:
    """One (batch, mode) row of :func:`speed`."""
    s = BenchSettings(model=model, batch_size=batch, device=device, steps=steps,
                      repeats=repeats, warmup=5, eval_images=max(10 * batch, 2560),
                      cuda_graph=mode == "graph")
    r = run_bench(s)
    row = {"batch": batch, "mode": mode, "precision": r["precision"],
           "train_images_per_s": r["train_images_per_s"]["median"],
           "eval_images_per_s": r["eval_images_per_s"]["median"],
           "seconds_per_mnist_epoch": r["seconds_per_mnist_epoch"]["median"],
           "peak_memory_mb": r["peak_memory_mb"], "peak_memory_kind": r["peak_memory_kind"],
           "dispatched_kernels_per_step": r["kernels_per_step"]}
    if device.startswith("cuda"):
        c = EffcnContender(s)
        for _ in range(s.warmup):
            c.train_step()
        row.update(device_profile(c.train_step))
    busy = f"  busy {row['busy_fraction']:.0%}" if "busy_fraction" in row else ""
    say(f"batch {batch:>4} {mode:<6} {row['seconds_per_mnist_epoch']:8.2f} s per MNIST "
        f"epoch  {row['eval_images_per_s']:9.0f} eval img/s  "
        f"{row['peak_memory_mb']:7.0f} MiB  "
        f"{row.get('kernels_per_step', row['dispatched_kernels_per_step']):6.0f} "
        f"kernels per step{busy}")
    return row


def validation_selected(epochs: list[dict], target: float) -> dict | None:
    """The first epoch at which the epoch selected so far on validation (val_acc, then the
    lower val_loss) has a logged test accuracy >= target, with the training seconds to it."""
    best, elapsed = None, 0.0
    for e in epochs:
        elapsed += e["epoch_seconds"]
        if best is None or (e["val_acc"], -e["val_loss"]) > (best["val_acc"], -best["val_loss"]):
            best = e
        if best.get("test_acc", 0.0) >= target:
            return {"epoch": e["epoch"], "selected_epoch": best["epoch"],
                    "test_acc": best["test_acc"], "training_seconds": elapsed}
    return None


def train_recipe(config_name: str, overrides: list[str]) -> tuple[dict, list[dict], float]:
    """(summary, epoch records, wall seconds) of one run of a config."""
    config = load_config(REPO / "configs" / config_name, overrides)
    t0 = time.perf_counter()
    summary = Trainer(config, quiet=True).fit()
    epochs = read_metrics(Path(summary["run_dir"]) / "metrics.jsonl", kind="epoch")
    return summary, epochs, time.perf_counter() - t0


def time_to_accuracy(overrides: list[str]) -> dict:
    summary, epochs, wall = train_recipe("mnist_cpu.yaml", overrides + ["train.monitor_test=true"])
    reached = validation_selected(epochs, TARGET)
    result = {"target_test_acc": TARGET, "reached": reached, "selection": summary["selection"],
              "test_acc": summary.get("test_acc"), "epochs_run": len(epochs),
              "wall_seconds": wall, "train_seconds": summary.get("train_seconds")}
    say(f"time to {TARGET:.1%} validation-selected test accuracy: "
        + (f"{reached['training_seconds']:.0f} s (epoch {reached['epoch']}, selected epoch "
           f"{reached['selected_epoch']})" if reached else
           f"not reached in {len(epochs)} epochs (final test {result['test_acc']})"))
    return result


def long_recipe(overrides: list[str]) -> dict:
    summary, epochs, wall = train_recipe("mnist_long_cpu.yaml", overrides)
    result = {"test_acc": summary.get("test_acc"), "selection": summary["selection"],
              "epochs": len(epochs), "minutes": wall / 60,
              "train_minutes": (summary.get("train_seconds") or 0) / 60}
    say(f"configs/mnist_long_cpu.yaml end to end: test accuracy {result['test_acc']} "
        f"({result['selection']}), {result['minutes']:.1f} min")
    return result


def sweep(workers: int, base_overrides: list[str], runs: Path) -> dict:
    """Seconds of ``effcn sweep`` with one seed and one worker, then N seeds on N workers."""
    result = {"workers": workers}
    for label, seeds, n in (("one", [1], 1), ("side_by_side", list(range(1, workers + 1)),
                                              workers)):
        spec = runs / f"sweep_{label}.yaml"
        spec.parent.mkdir(parents=True, exist_ok=True)
        save_yaml({"base": str(REPO / "configs" / "mnist_cpu.yaml"), "set": list(base_overrides),
                   "grid": {"train.recon_weight": [0.392]}, "seeds": seeds, "workers": n,
                   "dir": str(runs / ("sweep_" + label))}, spec)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "effcn", "sweep", str(spec)],
                              capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        result[f"{label}_seconds"] = time.perf_counter() - t0
        if proc.returncode != 0:
            result[f"{label}_error"] = proc.stderr[-2000:]
    if "one_seconds" in result and "side_by_side_seconds" in result:
        result["cost_of_n_vs_one"] = result["side_by_side_seconds"] / result["one_seconds"]
        say(f"effcn sweep: {workers} seeds side by side took "
            f"{result['cost_of_n_vs_one']:.2f}x one seed alone")
    return result


def peers(device: str, batches, steps: int, data_root: str | None) -> dict:
    """Each public port's training throughput with its own pipeline, each in its own process
    (benchmarks/peers.py: their packages' names clash with effcn's)."""
    root = data_root or os.environ.get("EFFCN_DATA") or str(REPO / ".devdata")
    out = {}
    for name in ("matthiasware", "akhdanfadh"):
        proc = subprocess.run([sys.executable, str(Path(__file__).with_name("peers.py")),
                               "--peer", name, "--folder", str(REPO / ".devdata" / "peers" / name),
                               "--data-root", root, "--device", device,
                               "--batches", ",".join(map(str, batches)), "--steps", str(steps)],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
        lines = proc.stdout.strip().splitlines()
        out[name] = json.loads(lines[-1]) if proc.returncode == 0 and lines else \
            {"failed": proc.stderr[-1000:]}
        say(f"peer {name}: {json.dumps(out[name])}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU, seconds")
    p.add_argument("--data-root", help="folder with the MNIST files (default: $EFFCN_DATA)")
    p.add_argument("--max-minutes", type=float, default=2.0, help="training budget of part 2")
    p.add_argument("--out", default="gpu_check.json", help="JSON report")
    p.add_argument("--runs", default="/tmp/effcn-gpu-check", help="run folder of parts 2-4")
    p.add_argument("--workers", type=int, default=4, help="seeds side by side in part 4")
    p.add_argument("--budget-minutes", type=float, default=7.5,
                   help="a part whose estimate no longer fits is not run (saying so)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: speed,"
                                              "time_to_accuracy,long_recipe,sweep,peers")
    a = p.parse_args(argv)
    if not a.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on the GPU machine, or with --smoke.",
              file=sys.stderr)
        return 2
    skip = set(filter(None, a.skip.split(",")))
    device = "cpu" if a.smoke else "cuda"
    report = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
              "torch": torch.__version__, "cuda": torch.version.cuda, "smoke": a.smoke}
    say(f"gpu_check on {report['device']}, torch {report['torch']}, CUDA {report['cuda']}")
    common = [f"run.dir={a.runs}", "train.progress=false", f"train.device={device}"]
    if a.data_root:
        common.append(f"data.root={a.data_root}")
    if a.smoke:  # every part, tiny: the CPU has no graph (the graph rows need CUDA)
        model, batches, modes, steps, repeats = "efficient_capsnet_tiny", (4,), ("eager",), 2, 1
        common += ["model.name=efficient_capsnet_tiny", "data.dataset=idx", "data.val_size=40",
                   "data.train_subset=64", "train.batch_size=32", "train.eval_batch_size=64"]
        accuracy_set, long_set, sweep_set = ["train.epochs=1"], ["train.epochs=1"], \
            ["train.epochs=1"]
        workers = 2
    else:
        model, batches, modes, steps, repeats = ("efficient_capsnet_mnist", (16, 32, 256),
                                                 ("eager", "graph"), 30, 3)
        accuracy_set = ["train.batch_size=256", "optim.lr=0.008"]
        long_set, sweep_set, workers = [], ["train.epochs=2"], a.workers
    t_start = time.perf_counter()

    def left() -> float:
        return a.budget_minutes * 60 - (time.perf_counter() - t_start)

    def part(name: str, estimate_s: float, fn) -> None:
        """Run one part unless skipped or over the budget; a failure is recorded, not fatal."""
        if name in skip:
            return
        if not a.smoke and estimate_s > left():
            report.setdefault("not_run", {})[name] = (
                f"needs about {estimate_s:.0f} s and {max(left(), 0):.0f} s of the "
                f"{a.budget_minutes} min budget are left")
            say(f"{name}: not run ({report['not_run'][name]})")
            return
        t0 = time.perf_counter()
        try:
            report[name] = fn()
        except Exception:  # noqa: BLE001 -- one broken part must not hide the others' figures
            report.setdefault("failed", {})[name] = traceback.format_exc()[-4000:]
            say(f"{name}: FAILED\n{report['failed'][name]}")
        report.setdefault("part_seconds", {})[name] = time.perf_counter() - t0
        write_json(a.out, report)

    def graph_epoch_seconds(batch: int, default: float) -> float:
        return next((r["seconds_per_mnist_epoch"] for r in report.get("speed", [])
                     if r["batch"] == batch and r["mode"] == "graph" and "error" not in r),
                    default)

    part("speed", 90, lambda: speed(model, device, batches, modes, steps, repeats))
    if "speed" in report and not any(r["mode"] == "graph" and "error" not in r
                                     for r in report["speed"]):
        common.append("train.cuda_graph=off")  # the graph failed above: the runs train eagerly
    if not a.smoke:  # an epoch at batch 256 is about a second with the graph: bound them
        per_epoch = graph_epoch_seconds(256, 3.0)
        epochs = max(1, min(30, int(a.max_minutes * 60 / max(per_epoch * 1.5, 1e-3))))
        accuracy_set += [f"train.epochs={epochs}", f"schedule.decay={0.6 ** (5 / epochs):.4f}"]
    part("time_to_accuracy", a.max_minutes * 60 + 30,
         lambda: time_to_accuracy(common + accuracy_set))
    # 28 epochs of batch 32, each with a validation pass, and the test at the end
    part("long_recipe", 28 * (graph_epoch_seconds(32, 25.0) * 1.3 + 1) + 20,
         lambda: long_recipe(common + long_set))
    part("sweep", 90, lambda: sweep(workers, [o for o in common if not o.startswith("run.dir")]
                                    + sweep_set, Path(a.runs)))
    part("peers", 60, lambda: peers(device, batches, steps, a.data_root))
    report["seconds"] = time.perf_counter() - t_start
    write_json(a.out, report)
    say(f"written: {a.out} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
