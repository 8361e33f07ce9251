"""The experiment configuration's schema: seven sections of typed fields with defaults.

A config is seven sections (model, data, task, optim, schedule, train, run). The sections hold
what every task uses; a task's own settings are ``task.args``, checked against the task's
``Args`` dataclass (training/tasks/). Reading YAML files, ``--set`` overrides, validation and the
translation of earlier versions' fields are in config_io.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from ..data.image_files import MAX_PIXELS


@dataclass
class ModelSection:
    name: str = "efficient_capsnet_mnist"   # a registered model (effcn.models.list_models())
    args: dict = field(default_factory=dict)  # overrides of the preset's config fields


@dataclass
class DataSection:
    dataset: str = "mnist"                  # a registered dataset (effcn datasets)
    root: Optional[str] = None              # folder with the files; None: $EFFCN_DATA, cache
    download: bool = True                   # fetch (checksummed) when not found; datasets that
                                            # cannot be downloaded say where to put their files
    val_size: int = 5000                    # validation images carved out of the training set
    protocol: str = "honest"                # honest (select on val) | authors (train on all,
                                            # select on TEST: labelled test-selected everywhere)
    split_seed: int = 0                     # fixes which training images are validation
    train_subset: int = 0                   # >0: train on this many images only (CPU budgets)
    augment: str = "paper"                  # paper | none | parts joined by '+', e.g. rotate+erase
    pixel_divisor: float = 255.0            # uint8 -> float: x / this (the authors' MNIST: 256)
    # Your own images (data.dataset folder | arrays; data/folder.py), made uint8 once at load:
    image_size: int = 0                     # side of the square images; 0: the model's input size
    channels: int = 0                       # 1 | 3; 0: the model's input channels
    fit: str = "resize"                     # resize (stretch) | pad (keep aspect ratio, black)
    test_fraction: float = 0.1              # held out as test (seeded) when there is no test split
    skip_bad_files: bool = False            # skip (and list) unreadable image files, not stop
    max_pixels: int = MAX_PIXELS           # image files declaring more pixels are refused


@dataclass
class TaskSection:
    name: str = "classification"            # a registered task (training/tasks: TASKS)
    args: dict = field(default_factory=dict)  # the task's own settings (its Args dataclass)


@dataclass
class OptimSection:
    name: str = "adam"                      # adam | adamw | sgd
    lr: float = 5e-4
    weight_decay: float = 0.0
    momentum: float = 0.9                   # sgd only
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-7                       # Keras' Adam default (PyTorch's is 1e-8)
    eps_placement: str = "keras"            # keras (the authors': see optim.keras_epsilon) | pytorch
    fused: bool = True                      # adam/adamw: one fused kernel per step (5x faster on CPU)


@dataclass
class ScheduleSection:
    # exp_decay (the paper: lr = max(lr0 * decay^epoch, min_lr)) | constant | step | cosine |
    # onecycle (per batch, peak = optim.lr) | plateau (on validation accuracy)
    name: str = "exp_decay"
    decay: float = 0.97
    min_lr: float = 5e-5
    step_size: int = 30                     # step: epochs between decays
    gamma: float = 0.1                      # step: decay factor
    pct_start: float = 0.3                  # onecycle: fraction of steps spent warming up
    factor: float = 0.5                     # plateau: lr multiplier
    patience: int = 5                       # plateau: epochs without improvement


@dataclass
class TrainSection:
    epochs: int = 150
    batch_size: int = 16
    eval_batch_size: int = 500
    recon_weight: float = 0.392             # reconstruction loss weight (0.392 * MSE)
    seed: int = 42
    device: str = "auto"                    # auto | cpu | cuda | cuda:N
    log_every: int = 50                     # batches between metric flushes / progress updates
    progress: bool = True                   # progress bar (tqdm when installed)
    skip_nonfinite: bool = False            # skip steps with NaN/inf loss instead of stopping
    ema_decay: float = 0.0                  # >0: EMA of the weights, e.g. 0.999 (see training/ema.py)
    # The fast path (training/fastpath.py; measured in BENCHMARKS.md):
    amp: str = "auto"                       # auto (bf16 on CUDA and bf16-capable CPUs) | bf16 | off
    test_amp: str = "off"                   # the final test's precision: off (fp32) | bf16 | auto
    monitor_test: bool = False              # also evaluate the test split every epoch (logged,
                                            # never selects): the authors' selection, same run
    channels_last: bool = True              # NHWC layout of weights and inputs
    compile: bool = False                   # torch.compile the model (falls back to eager)
    compile_mode: str = "default"           # default | reduce-overhead (CUDA graphs) | max-autotune
    sync_batchnorm: bool = False            # under torchrun on CUDA: BN statistics of the global batch
    cuda_graph: str = "auto"                # auto | on | off: the whole step as one CUDA graph
                                            # (training/cuda_graph.py; auto: on CUDA when possible)
    deterministic: bool = False             # deterministic CUDA kernels: reruns and resumes agree
                                            # bit for bit on a GPU (environment.deterministic_kernels)


@dataclass
class RunSection:
    dir: str = "runs"                       # parent folder of run directories
    name: str = ""                          # run directory name; default <config>-<timestamp>
    tensorboard: bool = False               # write TensorBoard events to <run>/tensorboard
    recon_every: int = 0                    # >0: save a reconstruction grid every N epochs (+ GIF)
    checkpoint_every: int = 0               # >0: keep checkpoints/epoch_NNN.pt every N epochs
    checkpoint_every_steps: int = 0         # >0: a resumable checkpoints/step.pt every N batches
    # Experiment trackers (training/trackers.py), each an optional extra:
    wandb: bool = False                     # log to Weights & Biases (WANDB_MODE=offline works)
    wandb_project: str = "effcn"
    wandb_name: str = ""                    # the W&B run's name; default: the run directory's
    wandb_tags: tuple = ()                  # e.g. [mnist, baseline]
    mlflow: str = ""                        # MLflow tracking URI, e.g. file:///path/mlruns; "": off
    mlflow_experiment: str = "effcn"        # the MLflow experiment (created when missing)


@dataclass
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    task: TaskSection = field(default_factory=TaskSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    run: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
