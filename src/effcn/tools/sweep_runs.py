"""One run of a sweep: its folder name, swept values and seed, and the `effcn train` command
that trains or resumes it (shared by grid/random sweeps, tools/sweep.py, and Optuna searches,
tools/search.py)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..io import wait_for_run_lock
from ..training.rundir import RunDir

# How long a run's turn waits for another process still writing it (a retried trial whose first
# worker lives on) before that run fails with the holder named; it is never trained twice.
LOCK_WAIT_SECONDS = 300.0


@dataclass
class SweepRun:
    name: str                 # run directory name
    params: dict              # swept key -> value
    seed: int


def format_value(v) -> str:
    """A value as it appears in run names and tables (path separators would nest folders)."""
    return f"{v:.3g}" if isinstance(v, float) else str(v).replace("/", "_").replace(os.sep, "_")


def override(key: str, value) -> str:
    return f"{key}={json.dumps(value) if not isinstance(value, str) else value}"


def overrides_for(spec: dict, run: SweepRun) -> list[str]:
    return [*spec["set"], *(override(k, v) for k, v in run.params.items()),
            f"train.seed={run.seed}", f"run.dir={spec['dir']}", f"run.name={run.name}",
            "train.progress=false"]


def threads_per_run(workers: int, threads: int | None = None) -> int:
    """Torch threads of each run: ``threads`` (--threads) when given, else the environment's
    OMP_NUM_THREADS when set (two sweeps side by side, each told to use one core, must not each
    take every core: OpenMP threads that outnumber the cores run several times slower), else the
    cores shared among the workers."""
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, not {threads}; leave it out to use "
                          f"$OMP_NUM_THREADS or the cores divided among the workers.")
    if threads is not None:
        return threads
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, (os.cpu_count() or 1) // workers)


def run_env(threads: int) -> dict:
    """The environment of a run's process: this one's, with its thread count."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads)}


def wait_for_writer(run_dir: RunDir) -> None:
    """Return once no process writes ``run_dir`` (its lock is free); RunLocked naming the
    holder after LOCK_WAIT_SECONDS."""
    wait_for_run_lock(run_dir.path, LOCK_WAIT_SECONDS)


def run_command(spec: dict, run: SweepRun) -> tuple[list[str], str]:
    """The `effcn train` command of a run, and "trained" or "resumed": a run folder with a
    resumable checkpoint is continued; one that never finished a step is started again."""
    run_dir = RunDir(Path(spec["dir"]) / run.name)
    cmd = [sys.executable, "-m", "effcn", "train", "--quiet"]
    if run_dir.last.is_file() or run_dir.step.is_file():
        return cmd + ["--resume", str(run_dir.path)], "resumed"
    if run_dir.path.exists():  # started but nothing saved: nothing worth keeping
        import shutil
        shutil.rmtree(run_dir.path)
    if spec.get("base"):
        cmd += ["--config", spec["base"]]
    return cmd + [a for o in overrides_for(spec, run) for a in ("--set", o)], "trained"
