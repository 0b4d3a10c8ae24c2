"""Distributed data parallel helpers so `striate train` / `finetune` run unchanged under torchrun.

Under `torchrun --nproc_per_node=N ...` the launcher sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT; `init_distributed` reads them and joins the process group (gloo on CPU,
nccl on CUDA). Without them everything degrades to a single process: `wrap_ddp` returns the model
as is, `make_sampler` returns None (let the DataLoader shuffle), `barrier` and `cleanup` do nothing.

Only the process with `info.is_main` should write checkpoints, logs and progress bars.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from striate.errors import StriateError

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_main: bool

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def under_torchrun() -> bool:
    """True when the torchrun environment variables are set (even for a world of 1)."""
    return all(v in os.environ for v in _TORCHRUN_VARS)


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise StriateError("device 'cuda' asked for but CUDA is not available")
        if device == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(device)


def init_distributed(device: str = "auto", backend: str | None = None, timeout_s: float = 600.0) -> DistInfo:
    """Join the torchrun process group if launched by torchrun; else describe a single process.

    `device` is "auto" (CUDA when available), "cpu", "cuda" or "cuda:K". Under torchrun, "cuda"
    means this process's own GPU (`cuda:LOCAL_RANK`). `backend` defaults to nccl on CUDA, gloo on CPU.
    Calling it twice is harmless (the existing group is reused).
    """
    if not under_torchrun():
        dev = _pick_device(device, 0)
        return DistInfo(rank=0, world_size=1, local_rank=0, device=dev, is_main=True)
    try:
        rank = int(os.environ["RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ["LOCAL_RANK"])
    except ValueError as exc:
        raise StriateError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {exc}") from None
    dev = _pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        chosen = backend or ("nccl" if dev.type == "cuda" else "gloo")
        from datetime import timedelta

        try:
            dist.init_process_group(
                backend=chosen,
                init_method="env://",
                rank=rank,
                world_size=world_size,
                timeout=timedelta(seconds=timeout_s),
                **({"device_id": dev} if dev.type == "cuda" else {}),
            )
        except (RuntimeError, ValueError) as exc:
            raise StriateError(f"cannot join the process group ({chosen}, rank {rank}/{world_size}): {exc}") from None
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, is_main=rank == 0)


def wrap_ddp(
    model: nn.Module, info: DistInfo, find_unused_parameters: bool = False, sync_bn: bool = False
) -> nn.Module:
    """Move the model to `info.device`; wrap it in DistributedDataParallel when world_size > 1.

    DDP broadcasts rank 0's parameters and buffers at construction, so every rank starts equal;
    gradients are averaged, so parameters stay equal. BatchNorm running statistics are rank 0's
    (DDP re-broadcasts buffers before each forward); `sync_bn=True` converts BN to SyncBatchNorm
    (CUDA only in PyTorch). Frozen parameters (requires_grad=False) are not synchronised.
    Unwrap with `unwrap_model` before saving.
    """
    model = model.to(info.device)
    if not info.distributed:
        return model
    if sync_bn:
        if info.device.type != "cuda":
            raise StriateError("sync_bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=ids,
        output_device=ids[0] if ids else None,
        find_unused_parameters=find_unused_parameters,
    )


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def broadcast_buffers(model: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BN running stats) to every rank, e.g. before evaluating on all ranks."""
    if not info.distributed:
        return
    for buf in unwrap_model(model).buffers():
        dist.broadcast(buf.data, src=0)


def make_sampler(dataset: Dataset, info: DistInfo, shuffle: bool = True, seed: int = 0) -> DistributedSampler | None:
    """A DistributedSampler giving each rank its own shard, or None for a single process.

    With a sampler, pass `shuffle=False` to the DataLoader and call `sampler.set_epoch(epoch)` at
    the start of every epoch (else each epoch sees the same order). Evaluation shards pad the
    last batch by repeating samples (`drop_last=False`), so evaluate on rank 0 alone for exact metrics.
    """
    if not info.distributed:
        return None
    return DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle, seed=seed)


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: float, info: DistInfo) -> float:
    """Mean of a scalar over ranks (the scalar itself in a single process)."""
    if not info.distributed:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / info.world_size


def finish(info: DistInfo) -> None:
    """End a successful distributed run: wait until every rank is done before any leaves.

    Without it a fast rank closes its connections while a slow one still finishes its last step.
    Not for the error path: a rank that failed must not wait for peers that may never arrive.
    """
    if info.distributed:
        barrier()


def cleanup() -> None:
    """Leave the process group (no-op in a single process).

    Drop DDP wrappers before: each holds the process group, and so its gloo threads, alive.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
