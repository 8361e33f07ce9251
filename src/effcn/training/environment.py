"""Where a run runs: the device it asks for, and the environment recorded in env.json."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from ..errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """auto (CUDA when available, else CPU) | cpu | cuda | cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but no CUDA device is available here; use "
                          f"--set train.device=cpu (or auto).")
    return torch.device(name)


def deterministic_kernels() -> None:
    """``train.deterministic``: cuDNN's and torch's deterministic kernels, so that two runs of one
    config, and a resumed run against an uninterrupted one, agree bit for bit on CUDA too (with
    CUDA's defaults two identical runs of the tiny model differed by up to 0.003 in a weight
    after 14 Adam steps on an H200, eager or graph; with these, by nothing:
    benchmarks/cuda_determinism.py). The CPU's kernels already are. cuBLAS reads
    CUBLAS_WORKSPACE_CONFIG at its first use, so it is set here (when unset) before the model
    touches the GPU; a process that already ran cuBLAS needs it set before it starts. Ops
    without a deterministic kernel warn (warn_only) instead of failing the run."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def environment(device: torch.device) -> dict:
    """Versions, device and git revision, saved as env.json in the run directory."""
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__, "effcn": __version__, "platform": platform.platform(),
           "device": str(device), "cpu_threads": torch.get_num_threads(), "argv": sys.argv,
           "world_size": int(os.environ.get("WORLD_SIZE", "1")),
           "started": datetime.now().isoformat(timespec="seconds")}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain"],
                               capture_output=True, text=True, timeout=5)
        if rev.returncode == 0:
            env["git_revision"] = rev.stdout.strip()
            env["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return env
