"""Two source trees' training steps (effcn bench's), alternating in the same minutes.

    git worktree add /tmp/before <commit>
    python benchmarks/bench_ab.py --before /tmp/before/src --after src --batch-size 16 --rounds 7

Starts one worker process per tree (PYTHONPATH pointing at it), warms both up, then has them
take turns: each round, each worker times ``--steps`` training steps (the order swapped every
round), so a change of load on a shared machine hits both alike. Prints each side's median
images/s and the median of the per-round ratios after/before (robust to load drifting between
rounds), and both sides' kernels per step (effcn.tools.bench.count_kernels; None for a tree
older than it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

WORKER = r"""
import json, sys, time, torch
from effcn.tools.bench import BenchSettings, EffcnContender
s = BenchSettings(**json.loads(sys.argv[1]))
torch.set_num_threads(s.threads or torch.get_num_threads())
c = EffcnContender(s)
for _ in range(s.warmup):
    c.train_step()
try:  # trees older than the kernel count have none
    from effcn.tools.bench import count_kernels
    kernels = count_kernels(c.train_step)
except ImportError:
    kernels = None
print(json.dumps({"kernels": kernels}), flush=True)
for line in sys.stdin:
    t0 = time.perf_counter()
    for _ in range(s.steps):
        c.train_step()
    print(json.dumps({"images_per_s": s.steps * s.batch_size / (time.perf_counter() - t0)}),
          flush=True)
"""


def start(src: str, settings: dict) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
    return subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(settings)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def turn(worker: subprocess.Popen) -> dict:
    worker.stdin.write("go\n")
    worker.stdin.flush()
    return json.loads(worker.stdout.readline())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="the earlier tree's src folder")
    p.add_argument("--after", required=True, help="the later tree's src folder")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=10, help="training steps per turn")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--augment", default="paper")
    a = p.parse_args(argv)
    settings = {"batch_size": a.batch_size, "steps": a.steps, "warmup": 3, "device": "cpu",
                "threads": a.threads, "augment": a.augment}
    workers = {"before": start(a.before, settings), "after": start(a.after, settings)}
    kernels = {name: json.loads(w.stdout.readline())["kernels"] for name, w in workers.items()}
    rates = {"before": [], "after": []}
    for r in range(a.rounds):
        order = ("before", "after") if r % 2 == 0 else ("after", "before")
        for name in order:
            rates[name].append(turn(workers[name])["images_per_s"])
    for w in workers.values():
        w.stdin.close()
        w.wait()
    ratios = [x / y for x, y in zip(rates["after"], rates["before"])]
    result = {"batch_size": a.batch_size, "kernels_per_step": kernels,
              "images_per_s": {k: statistics.median(v) for k, v in rates.items()},
              "ratio_after_before": {"median": statistics.median(ratios), "min": min(ratios),
                                     "max": max(ratios), "rounds": len(ratios)}}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
