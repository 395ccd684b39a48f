"""Data parallelism over ``torch.distributed`` (``torchrun --nproc-per-node N``, any
backend): each process takes every N-th batch (or, for ACDC, every N-th prompt of its one
batch), and the results are summed or gathered.
Without an initialised process group everything runs in one process."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import torch

T = TypeVar("T")


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (``0, 1`` without a group)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def my_share(items: Iterable[T]) -> list[T]:
    """Items ``rank, rank + world, ...`` of ``items``, in order."""
    rank, world = rank_and_world()
    return [x for i, x in enumerate(items) if i % world == rank]


def _comm_device(device: torch.device) -> torch.device:
    """Where the group's collectives take tensors: the CPU when the backend handles CPU
    tensors (gloo, MPI, or a ``cpu:gloo,...`` pair), else ``device`` (NCCL: the GPU)."""
    backend = str(torch.distributed.get_backend()).lower()
    if "gloo" in backend or "mpi" in backend:
        return torch.device("cpu")
    return device


def gather_all(t: torch.Tensor) -> list[torch.Tensor]:
    """``t`` of every process, in rank order (every process passes the same shape and
    dtype); ``[t]`` without a group."""
    _, world = rank_and_world()
    if world == 1:
        return [t]
    local = t.detach().to(_comm_device(t.device)).contiguous()
    parts = [torch.empty_like(local) for _ in range(world)]
    torch.distributed.all_gather(parts, local)
    return [p.to(t.device) for p in parts]


def gather_objects(obj: T) -> list[T]:
    """``obj`` (any picklable object) of every process, in rank order; ``[obj]`` without
    a group."""
    _, world = rank_and_world()
    if world == 1:
        return [obj]
    parts: list[T | None] = [None] * world
    torch.distributed.all_gather_object(parts, obj)
    return parts  # type: ignore[return-value]


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over the processes, added up in rank order on every process, so
    all of them get the same bits (an ``all_reduce`` does not promise that)."""
    parts = gather_all(t)
    total = parts[0].clone()
    for p in parts[1:]:
        total += p
    return total


def from_rank_zero(obj: T) -> T:
    """Process 0's ``obj`` (any picklable object) on every process."""
    _, world = rank_and_world()
    if world == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
