"""Scratch buffers reused between passes.

A fresh tensor of tens of megabytes costs a page fault per 4 KiB every time it is first
written on a CPU, so the engine keeps its large scratch buffers (the ``patch - current``
differences of inference passes, the rows of the block gradients) for the next pass.
Ownership is explicit: :meth:`BufferCache.take` hands a buffer out, and nobody else gets
it until its taker calls :meth:`BufferCache.give_back`. Buffers an autograd graph may
still read after the pass (those of passes with gradients) are never taken from here.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch


class BufferCache:
    """Free buffers by key (a role such as ``"delta"``, with dtype and device)."""

    def __init__(self) -> None:
        self._free: dict[Hashable, torch.Tensor] = {}

    def take(self, key: Hashable, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A flat buffer of at least ``numel`` elements, now the caller's alone: the free one
        under ``key`` if it is large enough and of this dtype and device, else a new one."""
        buf = self._free.pop(key, None)
        if buf is not None and buf.numel() >= numel and buf.dtype == dtype and buf.device == device:
            return buf
        del buf  # released before the new one is allocated
        with torch.inference_mode(False):  # a normal tensor: passes of either kind may use it
            return torch.empty(numel, dtype=dtype, device=device)

    def give_back(self, key: Hashable, buf: torch.Tensor) -> None:
        """Return a buffer taken under ``key``; the caller must not use it any more."""
        self._free[key] = buf

    def clear(self) -> None:
        """Drop every free buffer (their memory goes back to torch)."""
        self._free.clear()

    def __len__(self) -> int:
        return len(self._free)
