"""effcn against the plain reference (reference.py), in one run, alternating the contenders.

    PYTHONPATH=src python benchmarks/throughput_vs_reference.py --batch-size 16 --rounds 7 --threads 1

The contenders take turns batch by batch (A B C A B C ..., the order rotated every round), so a
load change on a shared machine hits all of them alike. A round is ``--steps`` training batches
per contender with the paper's augmentation, then ``--eval-images`` images of evaluation per
contender at the same batch size, in turns of ``--eval-chunk`` images. A contender's images/s in
a round is its images over the sum of its own turns' times. Prints the median, min and max over
rounds per contender and its ratio to the reference: the median of the per-round ratios (robust
to the load drifting between rounds) and the ratio of the medians. ``--variants`` adds effcn with one switch changed, to measure what each
switch buys. Synthetic data (effcn.tools.bench.synthetic_images); no dataset needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference import ReferenceContender  # noqa: E402

from effcn.tools.bench import BenchSettings, EffcnContender, synthetic_images  # noqa: E402

VARIANTS = {  # name -> BenchSettings changes from effcn's defaults
    "effcn": {},
    "plain-primary": {"product_primary": False},
    "contiguous": {"channels_last": False},
    "bf16": {"amp": "bf16"},
    "fp32": {"amp": "off"},
    "compile": {"compile": True},
    "loop-adam": {"fused_adam": False},
}


class Reference:
    name = "reference"

    def __init__(self, images, labels, args):
        self.c = ReferenceContender(images.squeeze(1).numpy(), labels.numpy(), args.batch_size,
                                    args.batch_size, workers=args.workers)
        self.args = args

    def warm_up(self):
        for _ in range(self.args.warmup):
            self.c.train_step()
        self.c.evaluate(4 * self.args.batch_size)

    def train(self):
        """Seconds of one training batch."""
        t0 = time.perf_counter()
        self.c.train_step()
        return time.perf_counter() - t0

    def eval(self):
        """Seconds to evaluate --eval-chunk images."""
        t0 = time.perf_counter()
        self.c.evaluate(self.args.eval_chunk)
        return time.perf_counter() - t0


class Effcn:
    def __init__(self, name, args):
        self.name = name
        s = BenchSettings(batch_size=args.batch_size, device="cpu", steps=args.steps,
                          eval_images=args.eval_images, warmup=args.warmup)
        self.c = EffcnContender(dataclasses.replace(s, **VARIANTS[name]))
        self.args = args

    def warm_up(self):
        self.c.warm_up()

    def train(self):
        return self.args.batch_size / self.c.train_images_per_s(1)

    def eval(self):
        return self.args.eval_chunk / self.c.eval_images_per_s(self.args.eval_chunk)


def same_function(effcn_contender, reference) -> float:
    """Max |difference| of the class lengths of the two models holding the same weights."""
    ref = reference.c.model
    ref.load_state_dict(effcn_contender.c.model.state_dict())
    x = effcn_contender.c.data.images[:32].float() / 255
    with torch.no_grad():
        a = effcn_contender.c.model.eval()(x).lengths
        b = ref.eval()(x)[0]
    return (a - b).abs().max().item()


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=20, help="training batches per round")
    p.add_argument("--eval-images", type=int, default=1000, help="per contender and round")
    p.add_argument("--eval-chunk", type=int, default=64, help="images per evaluation turn")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--workers", type=int, default=0, help="reference DataLoader workers")
    p.add_argument("--variants", default="", help=f"extra effcn variants, comma-separated: "
                   f"{', '.join(v for v in VARIANTS if v != 'effcn')}")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = max(args.batch_size * (args.steps + args.warmup), args.eval_images)
    images, labels = synthetic_images(n, 1, 28)
    names = ["effcn"] + [v for v in args.variants.split(",") if v]
    contenders = [Reference(images, labels, args)] + [Effcn(v, args) for v in names]
    print(f"same weights, max |length difference| effcn vs reference: "
          f"{same_function(contenders[1], contenders[0]):.2e}")  # both now start from it
    for c in contenders[1:]:
        print(f"{c.name}: precision {'bf16 autocast' if c.c.amp_dtype is not None else 'fp32'}")
    for c in contenders:
        c.warm_up()
    results = {c.name: {"train": [], "eval": []} for c in contenders}
    for r in range(args.rounds):
        order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
        seconds = {c.name: {"train": 0.0, "eval": 0.0} for c in contenders}
        for _ in range(args.steps):
            for c in order:
                seconds[c.name]["train"] += c.train()
        for _ in range(max(args.eval_images // args.eval_chunk, 1)):
            for c in order:
                seconds[c.name]["eval"] += c.eval()
        for c in contenders:
            results[c.name]["train"].append(args.steps * args.batch_size /
                                            seconds[c.name]["train"])
            results[c.name]["eval"].append(max(args.eval_images // args.eval_chunk, 1) *
                                           args.eval_chunk / seconds[c.name]["eval"])
        print(f"round {r + 1}/{args.rounds}: " + "  ".join(
            f"{c.name} {results[c.name]['train'][-1]:.0f}/{results[c.name]['eval'][-1]:.0f}"
            for c in contenders), flush=True)
    print(f"\nbatch {args.batch_size}, {args.rounds} rounds of {args.steps} training batches "
          f"(paper augmentation) and {args.eval_images} evaluation images per contender, "
          f"taking turns batch by batch, threads "
          f"{torch.get_num_threads()}, torch {torch.__version__}")
    print(f"{'contender':16s}{'train img/s: median':>20s}{'min':>7s}{'max':>7s}{'x ref':>7s}"
          f"{'(medians)':>10s}{'eval img/s: median':>20s}{'min':>7s}{'max':>7s}{'x ref':>7s}"
          f"{'(medians)':>10s}")
    table = {}
    ref = results["reference"]
    for name, res in results.items():
        row = {}
        line = f"{name:16s}"
        for kind in ("train", "eval"):
            s = summary(res[kind])
            per_round = [a / b for a, b in zip(res[kind], ref[kind])]
            s["ratio_of_medians"] = s["median"] / statistics.median(ref[kind])
            s["median_round_ratio"] = statistics.median(per_round)
            row[kind] = s
            line += (f"{s['median']:>20.0f}{s['min']:>7.0f}{s['max']:>7.0f}"
                     f"{s['median_round_ratio']:>7.2f}{s['ratio_of_medians']:>10.2f}")
        table[name] = row
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results,
                                               "summary": table}, indent=2))


if __name__ == "__main__":
    main()
