"""Kernels per training step, part by part (effcn.tools.bench.count_kernels on the CPU).

    python benchmarks/kernel_parts.py --batch-size 16                 # data.augment=paper, amp auto
    python benchmarks/kernel_parts.py --augment none --amp off --ops  # with the operators by name

Splits one warmed-up step of ``effcn bench``'s contender into what it runs: batch composition +
augmentation (the task's train_batch), forward + loss (fast-path forward, the task's loss,
zero_grad), backward, the optimizer step, and the rest of the whole step (accuracy and the
returned row: the whole step's count minus the parts). ``--ops`` adds each part's operators by
name (effcn.tools.bench.kernel_ops), to find which code spends them.
"""

from __future__ import annotations

import argparse

import torch

from effcn.tools.bench import BenchSettings, EffcnContender, count_kernels, kernel_ops


def part_ops(c: EffcnContender) -> dict:
    """{part: Counter of operators} of one training step of ``c`` (warmed up here)."""
    for _ in range(3):
        c.train_step()
    step, state = c.step, {}
    idx = torch.arange(c.s.batch_size, device=c.device)
    c.model.train()

    def batch():
        state["batch"] = c.task.train_batch(idx, c.generator)

    def forward_loss():  # the step up to its backward
        state["loss"] = step.forward_loss(state["batch"])[2][0]

    parts = {"batch composition + augmentation": kernel_ops(batch),
             "forward + loss": kernel_ops(forward_loss),
             "backward": kernel_ops(lambda: state["loss"].backward()),
             "optimizer step": kernel_ops(step.optimizer.step)}
    return parts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--augment", default="paper")
    p.add_argument("--amp", default="auto", help="auto | bf16 | off")
    p.add_argument("--model", default="efficient_capsnet_mnist")
    p.add_argument("--ops", action="store_true", help="also list each part's operators by name")
    a = p.parse_args()
    c = EffcnContender(BenchSettings(model=a.model, batch_size=a.batch_size, augment=a.augment,
                                     amp=a.amp))
    parts = part_ops(c)
    whole = count_kernels(c.train_step)
    for name, ops in parts.items():
        print(f"{name}: {sum(ops.values())}")
        if a.ops:
            print("   ", ", ".join(f"{op[6:]} {n}" for op, n in ops.most_common()))
    print(f"rest (accuracy, the returned row): {whole - sum(sum(o.values()) for o in parts.values())}")
    print(f"whole step: {whole}")


if __name__ == "__main__":
    main()
