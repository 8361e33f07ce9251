"""The GPU check: what the paper recipe costs on a lent GPU, in under 8 minutes.

    bash benchmarks/gpu_check.sh                 # on the GPU machine (data carried in .devdata/)
    bash benchmarks/gpu_check.sh --smoke         # anywhere: tiny model, CPU, seconds (the tests)

Prints and writes (``--out``, JSON) three measurements:
1. seconds per MNIST epoch (55,000 images) of the paper's model at batch 16 and 256, eager,
   torch.compile and CUDA graphs (compile mode reduce-overhead), with peak memory: effcn bench's
   own step (training.step.TrainStep), synthetic data;
2. the time to 99.6% MNIST test accuracy: configs/mnist_cpu.yaml's recipe at batch 256 (lr scaled
   linearly), data.protocol=authors so the test set is evaluated after every epoch (a
   TEST-SELECTED figure: it measures speed, not accuracy), up to --max-minutes of training;
3. the machine: GPU name, torch and CUDA versions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from effcn.io import write_json
from effcn.tools.bench import BenchSettings, run_bench
from effcn.training.config_io import load_config
from effcn.training.metrics import read_metrics
from effcn.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


def speed(model: str, device: str, batches, modes, steps: int, repeats: int) -> list[dict]:
    rows = []
    for batch in batches:
        for mode in modes:
            s = BenchSettings(model=model, batch_size=batch, device=device, steps=steps,
                              repeats=repeats, warmup=3, eval_images=4 * batch,
                              compile=mode != "eager",
                              compile_mode="reduce-overhead" if mode == "cuda-graphs"
                              else "default")
            r = run_bench(s)
            rows.append({"batch": batch, "mode": mode, "precision": r["precision"],
                         "train_images_per_s": r["train_images_per_s"]["median"],
                         "seconds_per_mnist_epoch": r["seconds_per_mnist_epoch"]["median"],
                         "peak_memory_mb": r["peak_memory_mb"],
                         "peak_memory_kind": r["peak_memory_kind"]})
            print(f"batch {batch:>4} {mode:<12} {rows[-1]['seconds_per_mnist_epoch']:8.1f} s per "
                  f"MNIST epoch  {rows[-1]['peak_memory_mb']:8.0f} MiB "
                  f"({r['peak_memory_kind']})", flush=True)
    return rows


def time_to_accuracy(overrides: list[str], target: float, run_dir: Path) -> dict:
    config = load_config(REPO / "configs" / "mnist_cpu.yaml", overrides)
    t0 = time.perf_counter()
    summary = Trainer(config, quiet=True).fit()
    epochs = read_metrics(Path(summary["run_dir"]) / "metrics.jsonl", kind="epoch")
    elapsed, reached = 0.0, None
    for e in epochs:
        elapsed += e["epoch_seconds"]
        if reached is None and e["val_acc"] >= target:
            reached = {"epoch": e["epoch"], "training_seconds": elapsed}
    return {"target_test_acc": target, "reached": reached, "selection": summary["selection"],
            "best_test_acc": summary["best_val_acc"], "epochs_run": len(epochs),
            "wall_seconds": time.perf_counter() - t0, "run_dir": summary["run_dir"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU, seconds")
    p.add_argument("--data-root", help="folder with the MNIST files (default: $EFFCN_DATA)")
    p.add_argument("--max-minutes", type=float, default=4.0, help="training budget of part 2")
    p.add_argument("--out", default="gpu_check.json", help="JSON report")
    p.add_argument("--runs", default="/tmp/effcn-gpu-check", help="run folder of part 2")
    a = p.parse_args(argv)
    if not a.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on the GPU machine, or with --smoke.",
              file=sys.stderr)
        return 2
    device = "cpu" if a.smoke else "cuda"
    report = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
              "torch": torch.__version__, "cuda": torch.version.cuda, "smoke": a.smoke}
    if a.smoke:
        model, batches, modes, steps, repeats = "efficient_capsnet_tiny", (4,), ("eager",), 2, 1
    else:
        model, batches, modes, steps, repeats = ("efficient_capsnet_mnist", (16, 256),
                                                 ("eager", "compile", "cuda-graphs"), 30, 3)
    report["speed"] = speed(model, device, batches, modes, steps, repeats)
    # an epoch at batch 256 is ~2-3 s on an H200: --max-minutes bounds the epochs
    per_epoch = next((r["seconds_per_mnist_epoch"] for r in report["speed"]
                      if r["batch"] == max(batches) and r["mode"] == "eager"), 10.0)
    epochs = 1 if a.smoke else max(1, min(30, int(a.max_minutes * 60 / max(per_epoch, 1e-3))))
    overrides = [f"run.dir={a.runs}", "train.progress=false", "data.protocol=authors",
                 f"train.epochs={epochs}", f"train.device={device}"]
    if a.data_root:
        overrides.append(f"data.root={a.data_root}")
    if a.smoke:
        overrides += ["model.name=efficient_capsnet_tiny", "data.dataset=idx",
                      "data.train_subset=64", "train.batch_size=32", "train.eval_batch_size=64"]
    else:
        overrides += ["train.batch_size=256", "optim.lr=0.008",
                      f"schedule.decay={0.6 ** (5 / epochs):.4f}"]
    report["time_to_accuracy"] = time_to_accuracy(overrides, 0.996, Path(a.runs))
    t = report["time_to_accuracy"]
    print(f"time to {t['target_test_acc']:.1%} test accuracy ({t['selection']}): "
          + (f"{t['reached']['training_seconds']:.0f} s (epoch {t['reached']['epoch']})"
             if t["reached"] else f"not reached in {t['epochs_run']} epochs "
                                  f"(best {t['best_test_acc']:.4f})"), flush=True)
    write_json(a.out, report)
    print(f"written: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
