"""The two public PyTorch ports' training throughput, each with its own data pipeline.

    python benchmarks/peers.py --peer matthiasware --folder .devdata/peers/matthiasware \
        --data-root .devdata --device cuda --batches 16,256 --steps 30

benchmarks/gpu_check.py runs this once per port, each in its own process (both ports ship a
top-level package whose name clashes with effcn's or with each other's). Their code is never
committed here: copy it (docs/performance.md says how) into .devdata/peers/NAME from

- ``matthiasware``: matthiasware/EfficientCN at c7da5c3 (``effcn/``, ``misc/utils.py``); its
  pipeline as train/mnist/effcn_train.py builds it: torchvision's MNIST, RandomAffine(+-30
  degrees, +-30 shear) and RandomResizedCrop(28, scale 0.8-1.2) per image in a DataLoader with
  2 workers, Adam at 5e-4, margin loss + 0.392 MSE;
- ``akhdanfadh``: akhdanfadh/efficient-capsnet-pytorch at 3954b1d (``model/``, ``utils/``); its
  MnistDataLoader (cv2 rotation, shift, squish, erase per image, 1 worker), FinalCapsNet,
  TotalLoss and the step of utils/trainer.py (including its per-step ``loss.item()``).

Prints one JSON object: per batch size the training images/s and seconds per 55,000-image
epoch over ``--steps`` batches after a warm-up (and the seed port's evaluation images/s: its
model's forward in eval mode on device-resident batches, as effcn bench times effcn's), or
{"skipped": why} when the folder or one of the port's dependencies (torchvision, cv2) is missing.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import time
from pathlib import Path

PEERS = ("matthiasware", "akhdanfadh")
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


def torchvision_root(data_root: Path, scratch: Path) -> Path:
    """A folder torchvision's datasets.MNIST reads without downloading: MNIST/raw/ holding the
    four IDX files found (gzipped or not) under ``data_root``."""
    raw = scratch / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        found = sorted(data_root.rglob(name)) + sorted(data_root.rglob(name + ".gz"))
        if not found:
            raise FileNotFoundError(f"{name}(.gz) is not under {data_root}")
        target = raw / name
        if not target.exists():
            if found[0].suffix == ".gz":
                with gzip.open(found[0]) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                shutil.copy(found[0], target)
    return scratch


def matthiasware(root: Path, batch: int, device):
    """(loader, step) of the seed port."""
    import torch
    import torch.nn.functional as F
    import torchvision.datasets as datasets
    import torchvision.transforms as T
    from effcn.functions import margin_loss
    from effcn.models_mnist import EffCapsNet
    transform = T.Compose([T.RandomAffine(degrees=(-30, 30), shear=(-30, 30)),
                           T.RandomResizedCrop(28, scale=(0.8, 1.2), ratio=(1, 1)),
                           T.ToTensor()])
    data = datasets.MNIST(root=str(root), train=True, download=False, transform=transform)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, pin_memory=True,
                                         num_workers=2, drop_last=True)
    model = EffCapsNet().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)

    def step(x, y):
        x, y = x.to(device), y.to(device)
        for p in model.parameters():
            p.grad = None
        u_h, x_rec = model.forward(x)
        loss = margin_loss(u_h, F.one_hot(y, num_classes=10)) + 0.392 * F.mse_loss(x, x_rec)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def evaluate(x):  # its test pass: the model's forward in eval mode (fp32, as its code runs)
        model.eval()
        model.forward(x)
        model.train()
    step.evaluate = evaluate
    return loader, step


def akhdanfadh(root: Path, batch: int, device):
    """(loader, step) of akhdanfadh's port."""
    import torch
    from model.losses import TotalLoss
    from model.model import FinalCapsNet
    from utils.data_loader import MnistDataLoader
    loader = MnistDataLoader(str(root), batch, shuffle=True, validation_split=0.0, num_workers=1)
    model = FinalCapsNet().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    criterion = TotalLoss(m_pos=0.9, m_neg=0.1, lambda_=0.5, recon_factor=5e-4)

    def step(images, labels):
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        out_images, out_labels = model(images, labels)
        loss = criterion(images, labels, out_images, out_labels)
        loss.backward()
        optimizer.step()
        loss.item()  # as utils/trainer.py logs every step
    return loader, step


def measure(name: str, folder: Path, data_root: Path, device: str, batches, steps: int) -> dict:
    needs = ("torchvision", "cv2") if name == "akhdanfadh" else ("torchvision",)
    missing = [m for m in needs if not _importable(m)]
    if not folder.is_dir():
        return {"skipped": f"{folder} is missing (copy the port there: benchmarks/peers.py)"}
    if missing:
        return {"skipped": f"the port needs {', '.join(missing)}, not installed here"}
    import torch
    sys.path.insert(0, str(folder))
    root = torchvision_root(data_root, Path("/tmp/effcn-peers-mnist"))
    build = {"matthiasware": matthiasware, "akhdanfadh": akhdanfadh}[name]
    torch.manual_seed(0)
    out = {}
    for batch in batches:
        loader, step = build(root, batch, torch.device(device))
        batches_iter = iter(loader)
        for _ in range(5):  # warm-up (workers start, cuDNN picks its algorithms)
            step(*next(batches_iter))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step(*next(batches_iter))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        per_s = steps * batch / (time.perf_counter() - t0)
        out[str(batch)] = {"train_images_per_s": per_s, "seconds_per_mnist_epoch": 55_000 / per_s}
        if hasattr(step, "evaluate"):
            out[str(batch)]["eval_images_per_s"] = eval_images_per_s(step.evaluate, batch, device)
    return out


def eval_images_per_s(evaluate, batch: int, device: str, calls: int = 20) -> float:
    """Images per second of ``evaluate`` on device-resident batches (what effcn bench times)."""
    import torch
    x = torch.rand(batch, 1, 28, 28, device=device)
    for _ in range(3):
        evaluate(x)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        evaluate(x)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return calls * batch / (time.perf_counter() - t0)


def _importable(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer", choices=PEERS, required=True)
    p.add_argument("--folder", required=True, help="the port's copied files")
    p.add_argument("--data-root", required=True, help="a folder holding MNIST's IDX files")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batches", default="16,256")
    p.add_argument("--steps", type=int, default=30)
    a = p.parse_args(argv)
    try:
        result = measure(a.peer, Path(a.folder), Path(a.data_root), a.device,
                         [int(b) for b in a.batches.split(",")], a.steps)
    except Exception as e:  # noqa: BLE001 -- a port that fails is reported, not fatal
        result = {"failed": f"{type(e).__name__}: {e}"[:500]}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
