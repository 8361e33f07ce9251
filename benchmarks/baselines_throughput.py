"""Training and inference images/s of the three MNIST models, measured interleaved.

    PYTHONPATH=src python benchmarks/baselines_throughput.py [--rounds 3] [--seconds 8]
    PYTHONPATH=src python benchmarks/baselines_throughput.py --profile-capsnet

On a shared, busy machine absolute speeds drift minute to minute; timing the models in
alternating rounds in one process makes their *ratios* comparable. Each model's best round (the
one least disturbed by other jobs, as timeit advises) and its median are printed; the ratios use
the best rounds. A training step is what the trainer does per batch: paper augmentation, forward with
labels, the model's loss (margin + 0.392 * reconstruction, or the CNN's cross-entropy), backward,
Adam step. Inputs are real MNIST training digits when EFFCN_DATA finds them, random otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from effcn.data.transforms import build_augment
from effcn.models import create_model
from effcn.training.tasks.classification import classification_loss_parts

MODELS = ("cnn_baseline_mnist", "efficient_capsnet_mnist", "capsnet_mnist")


def images(n: int) -> torch.Tensor:
    try:
        from effcn.data import MNIST
        return MNIST(root=None, split="train").images[:n].unsqueeze(1).float().div_(255)
    except Exception:  # no MNIST here: throughput does not depend on the pixels
        return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def timed(fn, seconds: float) -> float:
    """Calls of fn per second over about ``seconds`` (after one warm-up call)."""
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


@torch.inference_mode()
def profile_capsnet(batch_size: int = 32, calls: int = 3) -> None:
    """Seconds per eval-mode forward of each CapsNet stage (best of ``calls``)."""
    model = create_model("capsnet_mnist").eval()
    x = torch.rand(batch_size, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    h = model.conv(x)
    p = model.primary(h)
    u_hat = model.digit_caps.predictions(p)
    v = model.digit_caps.route(u_hat)[0]
    stages = {"conv 9x9/256": (model.conv, x), "primary caps conv": (model.primary, h),
              "predictions u_hat": (model.digit_caps.predictions, p),
              "routing (3 iterations)": (model.digit_caps.route, u_hat),
              "decoder": (model.reconstruct, v)}
    times = {}
    for name, (fn, arg) in stages.items():
        fn(arg)
        best = float("inf")
        for _ in range(calls):
            t0 = time.perf_counter()
            fn(arg)
            best = min(best, time.perf_counter() - t0)
        times[name] = best
    total = sum(times.values())
    print(f"CapsNet forward, batch {batch_size}, {torch.get_num_threads()} threads (best of {calls}):")
    for name, t in times.items():
        print(f"  {name:<24} {t:.3f} s  {100 * t / total:4.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0, help="per model, phase and round")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--eval-batch-size", type=int, default=100)
    ap.add_argument("--profile-capsnet", action="store_true",
                    help="only time the stages of one CapsNet forward")
    args = ap.parse_args()
    if args.profile_capsnet:
        return profile_capsnet()
    torch.manual_seed(0)
    data = images(1024)
    labels = torch.randint(0, 10, (len(data),), generator=torch.Generator().manual_seed(0))
    augment = build_augment("paper")
    models = {name: create_model(name) for name in MODELS}
    optims = {name: torch.optim.Adam(m.parameters(), lr=1e-4) for name, m in models.items()}
    rates = {(name, phase): [] for name in MODELS for phase in ("train", "eval")}
    bs, ebs = args.batch_size, args.eval_batch_size
    for r in range(args.rounds):
        for name, model in models.items():
            g = torch.Generator().manual_seed(r)

            def train_step():
                idx = torch.randint(0, len(data), (bs,), generator=g)
                x, y = augment(data[idx].clone(), generator=g), labels[idx]
                model.train()
                loss = classification_loss_parts(model, model(x, y), x, y, 0.392)[0]
                optims[name].zero_grad(set_to_none=True)
                loss.backward()
                optims[name].step()

            @torch.inference_mode()
            def eval_step():
                model.eval()
                model(data[:ebs])

            rates[name, "train"].append(bs * timed(train_step, args.seconds))
            rates[name, "eval"].append(ebs * timed(eval_step, args.seconds))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds of "
          f"{args.seconds:g} s; train batch {bs}, eval batch {ebs}; images/s: best round "
          f"(median); ratio of best rounds to Efficient-CapsNet")
    base = {p: max(rates[MODELS[1], p]) for p in ("train", "eval")}
    print("| model | train img/s | train vs effcn | eval img/s | eval vs effcn |")
    print("|---|---:|---:|---:|---:|")
    for name in MODELS:
        cells = []
        for p in ("train", "eval"):
            v = rates[name, p]
            cells += [f"{max(v):.1f} ({statistics.median(v):.1f})", f"{max(v) / base[p]:.2f}x"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
