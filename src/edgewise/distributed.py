"""Data parallelism over ``torch.distributed`` (``torchrun --nproc-per-node N``, any
backend): each process takes every N-th batch, and the results are summed or gathered.
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
