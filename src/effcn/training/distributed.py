"""Data-parallel training under ``torchrun``: process group, shards, rank-0 writing.

    torchrun --nproc_per_node 2 -m effcn train --config configs/mnist.yaml

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them everything here is a no-op and the
trainer runs as one process. ``train.batch_size`` stays the *global* batch: every process draws
the same permutation of the epoch (same seed) and takes every world_size-th image of each global
batch, so a 2-process run sees exactly the batches of a 1-process run, split in two. DDP averages
the gradients, i.e. the gradient of the global batch's mean loss when the shards are equal.
Only rank 0 writes the run directory (metrics, checkpoints, summary).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False          # init() created the process group (shutdown() ends it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device, timeout_s: float = 1800) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun prepared (gloo on CPU, nccl on CUDA).

    Returns the rank info and this process's device (cuda:LOCAL_RANK under CUDA). Outside
    torchrun: (DistInfo(), device) and nothing is initialised.
    """
    if not launched_by_torchrun():
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                    int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {info.local_rank} but only {torch.cuda.device_count()} "
                              f"CUDA devices; start torchrun with --nproc_per_node <= "
                              f"{torch.cuda.device_count()}.")
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=timeout_s))
        info = DistInfo(info.rank, info.world_size, info.local_rank, owns_group=True)
    return info, device


def shutdown(info: DistInfo) -> None:
    """End the process group if init() created it (one set up by the caller is left alone)."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def shard(batch_indices: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This process's part of a global batch: every world_size-th index from its rank."""
    return batch_indices[info.rank::info.world_size] if info.enabled else batch_indices


def steps_per_epoch(n: int, batch_size: int, info: DistInfo) -> int:
    """Global batches per epoch; under DDP a last batch too small to give every process an
    image is dropped (an empty shard would break BatchNorm and stall the gradient exchange)."""
    steps, last = divmod(n, batch_size)
    return steps + (1 if last >= info.world_size else 0)


def wrap(model: torch.nn.Module, info: DistInfo, device: torch.device,
         sync_batchnorm: bool = False) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` (the model itself when not distributed).

    With ``sync_batchnorm`` the BatchNorm layers normalise with the statistics of the global
    batch (as the 1-process run does) instead of each process's shard; the model is converted
    in place, so the caller keeps the same (unwrapped) module for eval and checkpoints.
    """
    if not info.enabled:
        return model
    if sync_batchnorm:
        if device.type != "cuda":
            raise ConfigError("train.sync_batchnorm needs CUDA (PyTorch's SyncBatchNorm does not "
                              "run on CPU); drop it, or use model.args.norm=instance.")
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place for a non-BN root
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def all_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over processes (returned as is when not distributed)."""
    if info.enabled:
        values = values.clone()
        dist.all_reduce(values)
    return values


def broadcast_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics), so that evaluation
    and the saved checkpoint are the same model on every process."""
    if info.enabled:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every process (e.g. the run directory it created)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]



def all_gather_object(obj, info: DistInfo) -> list:
    """Every process's ``obj``, in rank order ([obj] when not distributed)."""
    if not info.enabled:
        return [obj]
    objects = [None] * info.world_size
    dist.all_gather_object(objects, obj)
    return objects


def any_true(flag: bool, info: DistInfo) -> bool:
    """Whether ``flag`` is true on any process (every process gets the same answer)."""
    return any(all_gather_object(bool(flag), info))


def barrier(info: DistInfo) -> None:
    """Wait until every process gets here (no-op when not distributed)."""
    if info.enabled:
        dist.barrier()
