"""Bounded memory: how a batch is split so that one pass's patch buffers fit a budget,
and what to do when a pass runs out of memory anyway.

A patched pass keeps two ``[n_srcs, prompts, seq, d_model]`` buffers (the patch
activations and ``patch - current``) and, for gradients at mask 0, one block's gradient
rows ``[3 * heads + 2, prompts * seq * d_model]`` in float32. A :class:`Plan` bounds
them two ways, both giving the same scores as one pass:

- **prompts per pass** (``chunk``): the batch's prompts in slices; the loss is a mean over
  prompts, so a slice's gradient counts ``len(slice) / len(batch)``. No time is lost.
- **source blocks** (every mask 0 only, edge attribution patching): each pass tracks the
  sources of one block and scores only their edges, so the buffers hold one block.
  A pass per block: time grows with the number of blocks. Used only when a single
  prompt with every source does not fit.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from dataclasses import dataclass

import torch

from edgewise.data import PromptPairBatch
from edgewise.patching.model import PatchableModel

MaxMemory = int | str | None
"""Bytes (``2**30``), a size (``"1.5GiB"``, ``"800MB"``), ``"auto"`` (half of the free
memory of the model's device) or ``None`` (no limit: one pass per batch)."""

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


def parse_memory(max_memory: MaxMemory, device: torch.device) -> int | None:
    """``max_memory`` in bytes (None: no limit)."""
    if max_memory is None:
        return None
    if isinstance(max_memory, int):
        if max_memory <= 0:
            raise ValueError(f"max_memory must be positive, got {max_memory}")
        return max_memory
    text = str(max_memory).strip().lower()
    if text == "auto":
        return free_memory(device) // 2
    match = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([a-z]*)", text)
    if match is None or match.group(2) not in _UNITS:
        raise ValueError(
            f"max_memory {max_memory!r} is not a size: pass bytes (an int), a string like "
            "'1.5GiB' or '800MB', 'auto', or None"
        )
    n_bytes = int(float(match.group(1)) * _UNITS[match.group(2)])
    if n_bytes < 1:
        raise ValueError(
            f"max_memory {max_memory!r} is less than one byte: give a positive size such as "
            "'8GiB', or 'auto'"
        )
    return n_bytes


def memory_arg(text: str) -> str:
    """An ``argparse`` ``type`` for ``--max-memory`` (``8GiB``, ``800MB``, bytes, or
    ``auto``): the text itself, checked with :func:`parse_memory` while the arguments
    are parsed, before any model is loaded."""
    try:
        parse_memory(text, torch.device("cpu"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a memory size: give a size such as 8GiB, 800MB or 1500000000 "
            "(bytes, above 0), or auto (the device's free memory)") from None
    return text


def free_memory(device: torch.device) -> int:
    """Free memory of ``device`` in bytes (CUDA: the driver's count; CPU: MemAvailable)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def human(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError


@dataclass(frozen=True)
class Plan:
    """How one batch is run: ``chunk`` prompts per pass, one pass per source block."""

    chunk: int
    blocks: tuple[tuple[int, int], ...]
    budget: int | None = None

    @property
    def widest(self) -> int:
        """Sources in the widest block."""
        return max(hi - lo for lo, hi in self.blocks)

    def describe(self) -> str:
        parts = [f"{self.chunk} prompts/pass"]
        if len(self.blocks) > 1:
            parts.append(f"{len(self.blocks)} source blocks of <= {self.widest}")
        if self.budget is not None:
            parts.append(f"max_memory {human(self.budget)}")
        return ", ".join(parts)


def narrowest_block(model: PatchableModel) -> int:
    """The fewest sources a source block can hold: the widest source module's."""
    return max(m.src_hi - m.src_lo for m in model.graph.src_modules)


def pass_bytes(model: PatchableModel, prompts: int, seq: int, n_srcs: int) -> int:
    """Bytes of one pass's patch buffers and gradient rows (see the module docstring)."""
    d = int(model.cfg.d_model)
    item = next(model.wrapped_model.parameters()).element_size()
    heads = max((m.n_heads or 1 for m in model.graph.dest_modules), default=1)
    return prompts * seq * d * (2 * n_srcs * item + (3 * heads + 2) * 4)


def plan_passes(
    model: PatchableModel, prompts: int, seq: int, budget: int | None, blocks_ok: bool
) -> Plan:
    """The plan for a batch of ``prompts x seq`` tokens under ``budget`` bytes: all in one
    pass if it fits, else the most prompts per pass that fit, else (``blocks_ok``: every
    mask 0) one prompt per pass and the widest source blocks that fit."""
    n = len(model.srcs)
    whole = ((0, n),)
    if budget is None or pass_bytes(model, prompts, seq, n) <= budget:
        return Plan(prompts, whole, budget)
    per_prompt = pass_bytes(model, 1, seq, n)
    if per_prompt <= budget:
        return Plan(budget // per_prompt, whole, budget)
    need = f"one prompt of {seq} tokens with all {n} sources needs {human(per_prompt)}"
    if not blocks_ok:
        raise MemoryError(
            f"max_memory {human(budget)} is too small: {need}, and splitting the sources into "
            "blocks needs every mask at 0 (edge attribution patching). Raise max_memory."
        )
    widest = narrowest_block(model)
    fixed = pass_bytes(model, 1, seq, 0)
    per_src = pass_bytes(model, 1, seq, 1) - fixed
    max_srcs = (budget - fixed) // per_src
    if max_srcs < widest:
        raise MemoryError(
            f"max_memory {human(budget)} is too small: {need}, and the smallest source block "
            f"({widest} sources) {human(pass_bytes(model, 1, seq, widest))}. Raise max_memory."
        )
    return Plan(1, tuple(model.src_blocks(int(max_srcs))), budget)


def smaller_plan(model: PatchableModel, plan: Plan, blocks_ok: bool) -> Plan | None:
    """Half the prompts per pass, or (one prompt, ``blocks_ok``) source blocks half as
    wide; None when neither is possible."""
    if plan.chunk > 1:
        return dataclasses.replace(plan, chunk=plan.chunk // 2)
    if not blocks_ok or plan.widest <= narrowest_block(model):
        return None
    return dataclasses.replace(plan, blocks=tuple(model.src_blocks(plan.widest // 2)))


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (CUDA, MPS or CPU)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def sub_batch(batch: PromptPairBatch, lo: int, hi: int) -> PromptPairBatch:
    """Prompts ``lo..hi-1`` of ``batch`` (same key)."""
    if (lo, hi) == (0, batch.clean.shape[0]):
        return batch
    return dataclasses.replace(
        batch,
        clean=batch.clean[lo:hi],
        corrupt=batch.corrupt[lo:hi],
        answers=batch.answers[lo:hi],
        wrong_answers=batch.wrong_answers[lo:hi],
        lengths=None if batch.lengths is None else batch.lengths[lo:hi],
    )
