"""Do two identical CUDA runs agree bit for bit, and does a resumed run equal an uninterrupted one?

    CUBLAS_WORKSPACE_CONFIG=:4096:8 PYTHONPATH=src python benchmarks/cuda_determinism.py

For train.cuda_graph off and on, with torch's default kernels and with deterministic ones
(train.deterministic: cudnn.deterministic, torch.use_deterministic_algorithms(warn_only=True),
CUBLAS_WORKSPACE_CONFIG): the tiny model for 2
epochs on the tests' synthetic digits, fp32, an EMA; then the same run again, and a run stopped
after epoch 1 and resumed. Prints one JSON line per setting: the largest absolute difference of
any weight (model and EMA) between the first run and each of the other two, and the operators
torch warned have no deterministic implementation. On the CPU (a check of the script) the
graph rows are left out.
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from helpers import quick_overrides, write_synthetic_idx  # noqa: E402

from effcn.training.checkpoint import load_checkpoint  # noqa: E402
from effcn.training.config_io import load_config  # noqa: E402
from effcn.training.trainer import Trainer  # noqa: E402


def largest_difference(a: Path, b: Path) -> float:
    x, y = load_checkpoint(a, map_location="cpu"), load_checkpoint(b, map_location="cpu")
    return max((x[part][k].double() - y[part][k].double()).abs().max().item()
               for part in ("model", "ema") for k in x[part] if x[part][k].is_floating_point())


def one_setting(root: Path, out: Path, device: str, graph: str, deterministic: bool) -> dict:
    torch.backends.cudnn.deterministic = False  # torch's defaults; train.deterministic sets
    torch.use_deterministic_algorithms(False)   # environment.deterministic_kernels
    base = quick_overrides(root, out, epochs=2) + [
        f"train.device={device}", f"train.cuda_graph={graph}", "train.amp=off",
        "train.ema_decay=0.9", f"train.deterministic={str(deterministic).lower()}"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = {}
        for name in ("whole", "again"):
            t = Trainer(load_config(None, base + [f"run.name={name}"]), quiet=True)
            t.fit()
            runs[name] = t.run.last
        half = Trainer(load_config(None, base + ["run.name=half", "train.epochs=1"]), quiet=True)
        half.fit()
        Trainer(load_config(None, base + ["run.name=half"]), run_dir=half.run_dir, resume=True,
                quiet=True).fit()
    notes = sorted({str(w.message).split(" does not have")[0][:120] for w in caught
                    if "deterministic" in str(w.message)})
    return {"graph": graph, "deterministic": deterministic,
            "again_vs_first": largest_difference(runs["whole"], runs["again"]),
            "resumed_vs_first": largest_difference(runs["whole"], half.run.last),
            "nondeterministic_ops": notes}


def main() -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic_idx(Path(tmp) / "data")
        for graph in ("off", "on") if device == "cuda" else ("off",):
            for deterministic in (False, True):
                try:
                    row = one_setting(root, Path(tmp) / f"{graph}-{deterministic}", device,
                                      graph, deterministic)
                except Exception as e:  # noqa: BLE001 -- report the setting and go on
                    row = {"graph": graph, "deterministic": deterministic,
                           "failed": f"{type(e).__name__}: {e}"[:1500]}
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
