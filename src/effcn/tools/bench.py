"""``effcn bench``: training and evaluation throughput of a model preset on synthetic data.

    effcn bench --model efficient_capsnet_mnist --batch-size 16 --device cpu [--amp auto|bf16|off] [--compile]

The training step is the trainer's own (training.step.TrainStep: uint8 data resident on the
device, batched augmentation, the fast path, the configured optimizer and the model's own loss,
e.g. cross-entropy for the CNN baseline); evaluation is training.evaluate.evaluate. Each figure is measured after
warm-up over several repeats and reported as median with min and max; "seconds per MNIST epoch"
is 55,000 training images divided by the median training throughput; "kernels per step" is
:func:`count_kernels` of one training step (the operators it dispatches, each about one kernel
launch on a GPU). No dataset is needed.
"""

from __future__ import annotations

import collections
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch

from ..errors import EffcnError
from ..training.fastpath import precision_name

MNIST_TRAIN_IMAGES = 55_000  # 60,000 minus the 5,000 validation images


@dataclass
class BenchSettings:
    model: str = "efficient_capsnet_mnist"
    batch_size: int = 16
    eval_batch_size: int = 0          # 0: the training batch size
    device: str = "cpu"
    amp: str = "auto"                 # train.amp: auto | bf16 | off
    channels_last: bool = True        # train.channels_last
    compile: bool = False
    compile_mode: str = "default"
    product_primary: bool = True      # PrimaryCaps.full_map_product
    fused_adam: bool = True           # optim.fused
    config: str | None = None         # a YAML config whose optim.* and train.recon_weight apply
    augment: str = "paper"
    steps: int = 20                   # training steps per repeat
    eval_images: int = 2000           # images per evaluation repeat
    repeats: int = 5
    warmup: int = 5                   # training steps (and one eval pass) before timing
    threads: int = 0                  # torch threads (0: torch's default)
    cuda_graph: bool = False          # the whole step as one CUDA graph (train.cuda_graph; CUDA)

    def check(self) -> None:
        """One sentence (EffcnError) for a model that is not registered or a count below 1."""
        from ..models import list_models
        if self.model not in list_models():
            raise EffcnError(f"unknown model {self.model!r}; choose one of "
                             f"{', '.join(list_models())} (effcn models).")
        if self.cuda_graph and not self.device.startswith("cuda"):
            raise EffcnError(f"--cuda-graph needs a CUDA device, not {self.device!r}; drop it or "
                             f"pass --device cuda.")
        for name in ("batch_size", "steps", "repeats", "eval_images"):
            if getattr(self, name) < 1:
                raise EffcnError(f"--{name.replace('_', '-')} must be at least 1, got "
                                 f"{getattr(self, name)}.")


def synthetic_images(n: int, channels: int, size: int, seed: int = 0, width: int = 0):
    """uint8 images (n, C, size, width or size), a bright random rectangle on a dark noisy
    background (something for the augmentation's bounding boxes), and int64 labels (n,) in
    [0, 10)."""
    g = torch.Generator().manual_seed(seed)
    width = width or size
    images = torch.randint(0, 30, (n, channels, size, width), generator=g, dtype=torch.uint8)
    r = torch.randint(size // 5, size // 2, (n, 2), generator=g)
    h = torch.randint(size // 4, size // 2, (n, 2), generator=g)
    rows, cols = torch.arange(size), torch.arange(width)
    inside = ((rows >= r[:, :1]) & (rows < r[:, :1] + h[:, :1])).unsqueeze(2) & \
             ((cols >= r[:, 1:]) & (cols < r[:, 1:] + h[:, 1:])).unsqueeze(1)
    images[inside.unsqueeze(1).expand_as(images)] = 255
    return images, torch.randint(0, 10, (n,), generator=g)


class Stopwatch:
    """Wall-clock seconds, synchronising CUDA so that queued work is counted."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


class EffcnContender:
    """effcn's training step and evaluation for one settings object; used by ``effcn bench``
    and by benchmarks/throughput_vs_reference.py (which alternates it with the reference)."""

    def __init__(self, s: BenchSettings):
        from ..models import create_model
        from ..training import fastpath
        from ..training.config_io import load_config
        from ..training.environment import resolve_device
        from ..training.optim import build_optimizer
        from ..training.splits import Split
        from ..training.tasks.classification import ClassificationTask
        from ..training.step import TrainStep
        self.s, self.device = s, resolve_device(s.device)
        config = load_config(s.config)
        config.model.name, config.data.augment = s.model, s.augment
        config.optim.fused = s.fused_adam
        torch.manual_seed(0)
        self.model = create_model(s.model).to(self.device)
        for m in self.model.modules():
            if hasattr(m, "full_map_product"):
                m.full_map_product = s.product_primary
        fastpath.prepare_model(self.model, s.channels_last)
        self.amp_dtype = fastpath.amp_dtype(s.amp, self.device)
        self.forward_model = fastpath.maybe_compile(self.model, s.compile, s.compile_mode)
        cfg = self.model.config
        n = max(s.batch_size * (s.steps + s.warmup), s.eval_images)
        images, labels = synthetic_images(n, cfg.in_channels, cfg.image_size,
                                          width=getattr(cfg, "image_width", 0))
        self.data = Split(images.to(self.device), labels.to(self.device), [])
        self.task = ClassificationTask(config)
        self.task.setup(self.data, self.data)
        optimizer = build_optimizer(config, self.model.parameters(), capturable=s.cuda_graph)
        self.step = TrainStep(self.model, self.task, optimizer, self.amp_dtype,
                              fastpath.memory_format(s.channels_last), self.forward_model)
        self.generator = torch.Generator(device=self.device).manual_seed(0)
        self.graph = self.eval_forward = None
        if s.cuda_graph:  # the trainer's graphs (training/cuda_graph.py), without EMA
            from ..training.cuda_graph import GraphedForward, GraphedStep
            self.graph = GraphedStep(self.step, None, s.batch_size, self.device)
            self.eval_forward = GraphedForward(self.forward_model)
            sums = torch.zeros(5, dtype=torch.float64, device=self.device)
            self.generator, _ = self.graph.begin_epoch(self.generator, sums)
        self.clock = Stopwatch(self.device)
        self.cursor = 0

    def train_step(self) -> None:
        bs = self.s.batch_size
        if self.cursor + bs > self.task.num_train:
            self.cursor = 0
        idx = torch.arange(self.cursor, self.cursor + bs, device=self.device)
        self.cursor += bs
        self.model.train()
        if self.graph is not None:
            self.graph(idx)
        else:
            self.step(self.task.train_batch(idx, self.generator))

    def train_images_per_s(self, steps: int) -> float:
        t0 = self.clock.now()
        for _ in range(steps):
            self.train_step()
        return steps * self.s.batch_size / (self.clock.now() - t0)

    def eval_images_per_s(self, n: int) -> float:
        from ..training.evaluate import evaluate
        from ..training.tasks.classification import ImageSet
        bs = self.s.eval_batch_size or self.s.batch_size
        # no evaluation preprocessing: the synthetic images already have the model's size
        subset = ImageSet(self.data.images[:n], self.data.labels[:n])
        t0 = self.clock.now()
        evaluate(self.forward_model, self.task, subset, batch_size=bs, amp_dtype=self.amp_dtype,
                 forward=self.eval_forward)
        return n / (self.clock.now() - t0)

    def warm_up(self) -> None:
        for _ in range(self.s.warmup):
            self.train_step()
        self.eval_images_per_s(min(self.s.eval_images, 4 * (self.s.eval_batch_size or
                                                             self.s.batch_size)))


# Operators that only make or reshape tensor metadata (no kernel reads or writes memory).
METADATA_OPS = frozenset(f"aten::{name}" for name in (
    "view", "_unsafe_view", "reshape", "expand", "expand_as", "as_strided", "t", "transpose",
    "permute", "unsqueeze", "squeeze", "select", "slice", "narrow", "split", "split_with_sizes",
    "chunk", "unbind", "detach", "alias", "lift_fresh", "resolve_conj", "resolve_neg",
    "contiguous", "empty", "empty_like", "empty_strided", "to", "_to_copy_noop", "flatten",
    "unflatten", "view_as", "numpy_T", "result_type", "is_nonzero", "_has_compatible_shallow_copy_type",
    "set_", "size", "stride", "dim", "item", "_local_scalar_dense_noop"))


def kernel_ops(fn) -> "collections.Counter[str]":
    """The operators of one call of ``fn()`` that :func:`count_kernels` counts, by name
    (``{"aten::mul": 7, ...}``), for finding which code spends them."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    runs_kernel: dict[int, bool] = {}
    for e in events:  # a parent is listed before its children: walk children up to the root
        if e.name not in METADATA_OPS:
            node = e
            while node is not None and node.name.startswith("aten::"):
                runs_kernel[id(node)] = True
                node = node.cpu_parent
    return collections.Counter(
        e.name for e in events
        if (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
        and runs_kernel.get(id(e), False))


def count_kernels(fn) -> int:
    """How many kernels one call of ``fn()`` dispatches, counted with torch.profiler on the CPU.

    The count: top-level ``aten::`` operators (those not called from inside another aten
    operator; autograd's backward nodes run theirs at top level too) whose call reaches at least
    one operator that is not in :data:`METADATA_OPS`, i.e. that runs a kernel rather than only
    making a view, an empty tensor or a no-op conversion. One fused operator (e.g.
    ``aten::_fused_adam_`` over every parameter) counts once. On CUDA each such operator
    launches about one kernel; this is the launch-bound cost a CUDA graph removes. (A cast that
    autocast makes inside an operator, e.g. a weight to bf16 inside ``aten::conv2d``, is part of
    that operator's count of one.)
    """
    return sum(kernel_ops(fn).values())


def kernels_per_step(contender: "EffcnContender") -> int:
    """:func:`count_kernels` of one warmed-up training step of ``contender``."""
    contender.train_step()
    return count_kernels(contender.train_step)


def device_profile(fn, steps: int = 5) -> dict:
    """What ``steps`` calls of ``fn`` cost a CUDA device, from torch.profiler: kernels run per
    call, launch calls per call (cudaLaunchKernel and friends; a graph replay is one
    cudaGraphLaunch) and the busy fraction (the kernels' summed time over the wall time)."""
    from torch.profiler import ProfilerActivity, profile
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
        wall_us = (time.perf_counter() - t0) * 1e6
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    launches = [e for e in prof.events() if e.name in ("cudaLaunchKernel", "cuLaunchKernel",
                                                        "cudaLaunchKernelExC", "cudaGraphLaunch",
                                                        "cuLaunchKernelEx")]
    busy = sum(e.time_range.elapsed_us() for e in kernels)
    return {"kernels_per_step": len(kernels) / steps, "launches_per_step": len(launches) / steps,
            "busy_fraction": busy / wall_us}


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """(MiB, what it is): CUDA's peak allocated memory, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "peak CUDA memory allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "peak process RSS"


def run_bench(s: BenchSettings) -> dict:
    """Warm up, then ``repeats`` rounds of (train ``steps`` batches, evaluate ``eval_images``)."""
    s.check()
    if s.threads:
        torch.set_num_threads(s.threads)
    c = EffcnContender(s)
    if c.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(c.device)
    c.warm_up()
    train, evals = [], []
    for _ in range(s.repeats):
        train.append(c.train_images_per_s(s.steps))
        evals.append(c.eval_images_per_s(s.eval_images))
    mem, mem_kind = peak_memory_mb(c.device)
    kernels = kernels_per_step(c)
    tr = spread(train)
    return {"settings": asdict(s), "device": str(c.device), "torch": torch.__version__,
            "precision": precision_name(c.amp_dtype),
            "threads": torch.get_num_threads(), "train_images_per_s": tr,
            "eval_images_per_s": spread(evals),
            "seconds_per_mnist_epoch": {k: (MNIST_TRAIN_IMAGES / v if k != "n" else v)
                                        for k, v in (("median", tr["median"]), ("min", tr["max"]),
                                                     ("max", tr["min"]), ("n", tr["n"]))},
            "peak_memory_mb": mem, "peak_memory_kind": mem_kind, "kernels_per_step": kernels}


def format_report(r: dict) -> str:
    s = r["settings"]
    head = (f"{s['model']}  batch {s['batch_size']}  device {r['device']}  "
            f"amp {s['amp']} ({r['precision']})  channels_last {s['channels_last']}  "
            f"compile {s['compile']}  augment {s['augment']}  threads {r['threads']}  "
            f"torch {r['torch']}")
    rows = [("training images/s", r["train_images_per_s"], "{:.0f}"),
            ("evaluation images/s", r["eval_images_per_s"], "{:.0f}"),
            ("seconds per MNIST epoch", r["seconds_per_mnist_epoch"], "{:.1f}")]
    lines = [head, f"{'':26s}{'median':>10s}{'min':>10s}{'max':>10s}   over {s['repeats']} repeats"]
    for name, v, fmt in rows:
        lines.append(f"{name:26s}" + "".join(f"{fmt.format(v[k]):>10s}"
                                             for k in ("median", "min", "max")))
    lines.append(f"{r['peak_memory_kind'] + ' (MiB)':26s}{r['peak_memory_mb']:>10.0f}")
    lines.append(f"{'kernels per step':26s}{r['kernels_per_step']:>10d}   (bench.count_kernels)")
    return "\n".join(lines)
