"""The run directory: one object that knows every path of a run.

    RUN/
      config.yaml            the resolved config (what --resume reads)
      env.json               versions, device, git revision (first start, then each resume)
      metrics.jsonl          batch and epoch records (training/metrics.py)
      summary.json           written once by training: the test figures of best.pt
      checkpoints/           best.pt, last.pt (resumable), epoch_NNN.pt (run.checkpoint_every),
                             step.pt (mid-epoch, resumable: SIGTERM, run.checkpoint_every_steps)
      eval/                  <split>_<checkpoint>.json, one report per `effcn eval`
      recon/                 fixed_images.npz, reconstruction grids, their GIF (run.recon_every)
      figures/               effcn visualize output, effcn explore's explorer.html
      tensorboard/           TensorBoard events (run.tensorboard)
      trackers.json          the W&B / MLflow run ids (run.wandb, run.mlflow), continued on resume
      wandb/                 W&B's own files (run.wandb, unless WANDB_DIR is set)
      export/                effcn export output (ONNX, TorchScript)

Training writes summary.json; evaluation writes only its own reports under eval/.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from ..errors import EffcnError
from ..io import read_json


class RunDir:
    """Paths of one run directory (nothing is created until asked)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    # ------------------------------------------------------------ creating / opening
    @classmethod
    def create(cls, parent: str | Path, name: str = "", prefix: str = "run") -> "RunDir":
        """A fresh run directory under ``parent``: ``name`` if given (an existing one is refused,
        never reused), else ``<prefix>-<timestamp>`` made unique."""
        parent = Path(parent)
        if parent.exists() and not parent.is_dir():
            raise EffcnError(f"run.dir={parent} is a file, not a folder; point run.dir at a "
                             f"folder (it is created if missing).")
        if name:
            path = parent / name
            if path.exists():
                raise EffcnError(f"run directory {path} already exists; continue it with "
                                 f"effcn train --resume {path}, or choose another run.name.")
        else:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            path, n = parent / f"{prefix}-{stamp}", 1
            while path.exists():
                path, n = parent / f"{prefix}-{stamp}-{n}", n + 1
        path.mkdir(parents=True)
        return cls(path)

    @classmethod
    def open(cls, path: "str | Path | RunDir") -> "RunDir":
        """An existing run directory (a folder with config.yaml), else the one clear error; a
        RunDir is checked and returned as it is."""
        run = path if isinstance(path, RunDir) else cls(path)
        if not run.is_run(run.path):
            what = "does not exist" if not run.path.exists() else "has no config.yaml"
            raise EffcnError(f"{run.path} is not an effcn run directory (it {what}); pass the "
                             f"folder that effcn train created.")
        return run

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> "RunDir":
        """The run a checkpoint file belongs to (RUN/checkpoints/x.pt -> RUN)."""
        ckpt = Path(checkpoint)
        return cls(ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent)

    @staticmethod
    def is_run(path: str | Path) -> bool:
        return (Path(path) / "config.yaml").is_file()

    # ----------------------------------------------------------------- the files
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def env_path(self) -> Path:
        return self.path / "env.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def step(self) -> Path:
        """The mid-epoch checkpoint (preemption, run.checkpoint_every_steps); stale once the
        epoch it is part of has ended (last.pt is then newer)."""
        return self.checkpoints / "step.pt"

    @property
    def fixed_images(self) -> Path:
        """The 32 validation images every reconstruction grid of the run shows."""
        return self.recon / "fixed_images.npz"

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    @property
    def recon(self) -> Path:
        return self.path / "recon"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def trackers_path(self) -> Path:
        """{"wandb": {...}, "mlflow": {...}}: the tracker runs this run logs to."""
        return self.path / "trackers.json"

    @property
    def export_dir(self) -> Path:
        return self.path / "export"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch_{epoch:03d}.pt"

    def epoch_checkpoints(self) -> list[tuple[int, Path]]:
        """(epoch, path) of every checkpoints/epoch_NNN.pt, in epoch order."""
        found = []
        for p in self.checkpoints.glob("epoch_*.pt"):
            try:
                found.append((int(p.stem.split("_")[1]), p))
            except (IndexError, ValueError):
                continue
        return sorted(found)

    def eval_report_path(self, split: str, checkpoint: str | Path) -> Path:
        return self.eval_dir / f"{split}_{Path(checkpoint).stem}.json"

    def checkpoint(self, which: str = "best") -> Path:
        """best | last | a path: the checkpoint file, or a clear error when it is missing."""
        if which not in ("best", "last"):
            return Path(which)
        if not self.path.is_dir():
            raise EffcnError(f"run directory {self.path} does not exist; pass a folder created "
                             f"by effcn train.")
        path = self.best if which == "best" else self.last
        if not path.is_file():
            raise EffcnError(f"{self.path} has no {which} checkpoint ({path} is missing); has "
                             f"the run finished an epoch?")
        return path

    # ------------------------------------------------------------------ contents
    def load_config(self):
        """The run's resolved Config (config.yaml)."""
        from .config_io import config_from_dict, load_yaml
        RunDir.open(self)
        return config_from_dict(load_yaml(self.config_path))

    def summary(self) -> dict:
        """summary.json ({} while the run is unfinished)."""
        return read_json(self.summary_path)

    def eval_reports(self) -> dict[str, dict]:
        """Every `effcn eval` report of this run, by file stem (e.g. 'test_best')."""
        return {p.stem: read_json(p) for p in sorted(self.eval_dir.glob("*.json"))}


def resolve_checkpoint(run: str | Path, which: str = "best") -> Path:
    """A run directory + best/last, or a checkpoint file itself, -> the checkpoint path."""
    path = Path(run)
    if path.is_file():
        return path
    return RunDir(path).checkpoint(which)
