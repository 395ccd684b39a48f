"""What one patching context does, decided once from the graph, the masks and the patch:
which sources a pass tracks, which destinations get a hook and how each is patched (see
:mod:`edgewise.patching.engine`, which carries a plan out)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from edgewise.patching.model import PatchableModel


# ---------------------------------------------------------------------------- clean runs
@dataclass
class CleanRun:
    """The clean pass on one batch, for patched passes that start mid-model.

    While every destination before block ``b`` has all its masks at 0, everything before
    ``b`` is the clean model: a pass may start at ``b`` from the clean residual stream,
    with ``delta`` of the sources before ``b`` fixed at ``patch - clean``
    (``engine.patched_outputs`` with ``start=b``). Build with ``engine.clean_run``.
    """

    tokens: torch.Tensor  # [B, S]
    patch: torch.Tensor  # [n_srcs, B, S, d_model]: what the sources are patched with
    delta: torch.Tensor  # [n_srcs, B, S, d_model]: patch - clean
    resid: dict[int, torch.Tensor]  # block -> residual stream entering it [B, S, d_model]
    n_fixed: dict[int, int]  # block -> number of sources whose hooks fire before it
    kwargs: dict[str, Any]  # the partial forward's other inputs (adapter.start_kwargs)
    partial: bool  # whether passes may start mid-model (checked against the full model)
    unembed_weight: torch.Tensor | None = None  # adapter.unembed_weight(), made once
    cache: dict[str, tuple] = field(default_factory=dict)  # dest -> (mask, version, nf, part)
    # positions [0, skip) hold the clean run in every patched pass (every source's patch
    # equals its clean output there, and the model is causal): passes compute only
    # positions [skip, S), attending to the clean keys and values ``past`` of the prefix
    skip: int = 0
    past: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # block -> K, V [B, h, skip, d]


# ---------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """How one patching context patches: built once from the graph and the masks.

    ``copies``: the batch holds that many copies of the prompts (masks ``[c, ...]``
    patch copy ``i`` with ``mask[i]``; a mask without that dim is shared by all).
    ``lo``/``hi``: the sources whose differences the pass tracks (its buffer's rows).
    ``span``: per destination, the tracked sources it reads. ``fused``/``group_of``: the
    fused blocks; ``zero_groups``/``zero_member``: the per-block gradients at mask 0.
    ``start``/``clean``: a pass from a clean start at that block.
    """

    masks: dict[str, torch.Tensor]  # the tracked columns, with a copies dim [c | 1, ...]
    patch: torch.Tensor | None  # [hi - lo, batch | 1, seq | 1, d]
    fixed_delta: torch.Tensor | None
    copies: int
    stacked: bool
    lo: int
    hi: int
    span: dict[str, tuple[int, int]]
    nonzero: dict[str, bool]
    active: set[str]  # destinations that get a hook
    fused: dict[tuple[str, int, int], tuple[list[str], list[str]]] = field(default_factory=dict)
    group_of: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    zero_groups: dict[str, tuple[list[tuple[str, int, int]], int, int]] = field(default_factory=dict)
    zero_member: dict[str, str] = field(default_factory=dict)
    param_grads: bool = True
    track_current: bool = False
    start: int | None = None
    clean: CleanRun | None = None
    given: Mapping[str, torch.Tensor] = field(default_factory=dict)  # the caller's masks
    # per-dimension multipliers of the tracked sources' differences [c | 1, hi - lo, d_model]
    src_dims: torch.Tensor | None = None


def make_plan(
    pm: PatchableModel,
    masks: Mapping[str, torch.Tensor],
    patch_src_outs: torch.Tensor | None,
    fixed_delta: torch.Tensor | None = None,
    param_grads: bool = True,
    src_block: tuple[int, int] | None = None,
    clean: CleanRun | None = None,
    start: int | None = None,
    src_dims: torch.Tensor | None = None,
) -> Plan:
    """Check the arguments of :meth:`PatchableModel.patch` and plan the pass."""
    mods = pm.dest_modules
    missing = set(mods) - set(masks)
    if missing:
        raise ValueError(f"masks lack destination modules: {sorted(missing)[:4]}")
    copies, stacked = 1, False
    for name, m in mods.items():
        got = tuple(masks[name].shape)
        if got[1:] == m.mask_shape and len(got) == len(m.mask_shape) + 1:
            if stacked and got[0] != copies:
                raise ValueError(f"masks stack different numbers of circuits ({copies} and {got[0]})")
            copies, stacked = got[0], True
        elif got != m.mask_shape:
            raise ValueError(f"mask for {name} has shape {got}, expected {m.mask_shape} "
                             f"(or [circuits, *{m.mask_shape}])")  # fmt: skip
    n_srcs = len(pm.srcs)
    nonzero = {name: bool(m.any()) for name, m in masks.items()}
    track_current = any(nonzero.values())
    full = {n: m if m.dim() == len(mods[n].mask_shape) + 1 else m[None] for n, m in masks.items()}
    if start is not None:
        if src_dims is not None:
            raise ValueError("src_dims is not supported by passes from a clean start; run the full model")
        plan = _clean_start_plan(pm, full, patch_src_outs, clean, start, copies, stacked, nonzero)
        plan.given = masks
        return plan
    if patch_src_outs is None:
        raise ValueError("patch_src_outs is needed (compute it with model.src_outs or src_ablations)")
    blo, bhi = pm.block_range(src_block)
    if src_block is not None and track_current:
        raise ValueError(
            "src_block needs every mask at 0 (edge attribution patching): with nonzero "
            "masks a forward pass patches from every source; split the batch instead"
        )
    if patch_src_outs.shape[0] == n_srcs and src_block is not None:
        patch_src_outs = patch_src_outs[blo:bhi]
    if patch_src_outs.shape[0] != bhi - blo:
        raise ValueError(
            f"patch_src_outs has {patch_src_outs.shape[0]} sources, the graph has "
            f"{n_srcs}" + (f" (src_block {src_block}: {bhi - blo})" if src_block else "")
            + ": compute it with model.src_outs or src_ablations"
        )
    if fixed_delta is not None:
        if track_current:
            raise ValueError("fixed_delta needs every mask at 0 (it replaces the differences "
                             "that nonzero masks would patch in)")
        if fixed_delta.dim() == 4 and fixed_delta.shape[0] == n_srcs and src_block is not None:
            fixed_delta = fixed_delta[blo:bhi]
        if fixed_delta.dim() != 4 or fixed_delta.shape[0] != bhi - blo:
            raise ValueError(f"fixed_delta must be [n_srcs={bhi - blo}, batch, seq, d_model], "
                             f"got {tuple(fixed_delta.shape)}")
        fixed_delta = fixed_delta.contiguous()
    span = {name: (max(m.src_lo, blo), min(m.src_hi, bhi)) for name, m in mods.items()}
    tracked = {
        name: full[name][..., lo - mods[name].src_lo : hi - mods[name].src_lo]
        for name, (lo, hi) in span.items()
    }
    active = {n for n in mods if nonzero[n] or masks[n].requires_grad}
    dims = _checked_src_dims(pm, src_dims, copies, stacked, fixed_delta, masks)
    plan = Plan(tracked, patch_src_outs, fixed_delta, copies, stacked, blo, bhi, span, nonzero,
                active, param_grads=param_grads, track_current=track_current, given=masks,
                src_dims=None if dims is None else dims[:, blo:bhi])  # fmt: skip
    _plan_fused(pm, plan)
    if not stacked and pm.seq_len is None:
        _plan_zero_groups(pm, plan, masks)
    return plan


def _checked_src_dims(pm: PatchableModel, src_dims: torch.Tensor | None, copies: int, stacked: bool,
                      fixed_delta: torch.Tensor | None, masks: Mapping[str, torch.Tensor]) -> torch.Tensor | None:  # fmt: skip
    """``src_dims`` as ``[c | 1, n_srcs, d_model]`` after checking it (see
    :meth:`PatchableModel.patch`), or None."""
    if src_dims is None:
        return None
    n, d = len(pm.srcs), int(pm.cfg.d_model)
    if not isinstance(src_dims, torch.Tensor) or src_dims.shape[-2:] != (n, d) or src_dims.dim() not in (2, 3):
        got = tuple(src_dims.shape) if isinstance(src_dims, torch.Tensor) else type(src_dims).__name__
        raise ValueError(f"src_dims must be [n_srcs={n}, d_model={d}] or [circuits, {n}, {d}], got {got}")
    if src_dims.dim() == 3 and src_dims.shape[0] != 1 and (not stacked or src_dims.shape[0] != copies):
        raise ValueError(f"src_dims stacks {src_dims.shape[0]} circuits but the masks stack "
                         f"{copies if stacked else 'none'}: stack the masks the same way")  # fmt: skip
    if fixed_delta is not None:
        raise ValueError("src_dims and fixed_delta exclude each other (fixed_delta replaces the differences)")
    if torch.is_grad_enabled() and any(m.requires_grad for m in masks.values()):
        raise ValueError("src_dims is for inference passes: the backward would ignore it; "
                         "run under torch.inference_mode() with masks that need no gradient")
    return (src_dims if src_dims.dim() == 3 else src_dims[None]).to(pm.device)


def _plan_fused(pm: PatchableModel, plan: Plan) -> None:
    """Destinations of one block patched by one product over delta: its projected Q/K/V
    (same sources), and the part of its other inputs (MLP, end) from those sources.
    Nonzero masks only. Key: (resid hook, lo, hi)."""
    mods = pm.dest_modules
    for dh in pm.dest_hooks:
        name = dh.module.module_name
        if dh.projected and plan.nonzero[name]:
            key = (dh.resid, *plan.span[name])
            plan.fused.setdefault(key, ([], []))[0].append(name)  # type: ignore[arg-type]
    for key, (proj, inputs) in plan.fused.items():
        block = mods[proj[0]].block
        plan.group_of.update(dict.fromkeys(proj, key))
        for dh in pm.dest_hooks:
            m = dh.module
            lo, hi = plan.span[m.module_name]
            if (not dh.projected and plan.nonzero[m.module_name] and m.block == block
                    and lo == key[1] and hi >= key[2]):  # fmt: skip
                inputs.append(m.module_name)
                plan.group_of[m.module_name] = key


def _plan_zero_groups(pm: PatchableModel, plan: Plan, masks: Mapping[str, torch.Tensor]) -> None:
    """Mask gradients at 0 gathered per block (see ``BlockGrads``): resid hook ->
    members (name, rows, src_hi), and the block's source range."""
    mods = pm.dest_modules

    def wants(name: str) -> bool:
        return not plan.nonzero[name] and masks[name].requires_grad

    for dh in pm.dest_hooks:
        m = dh.module
        m_lo, m_hi = plan.span[m.module_name]
        if dh.projected and wants(m.module_name) and m_lo < m_hi:
            members, lo, hi = plan.zero_groups.setdefault(dh.resid, ([], m_lo, m_hi))  # type: ignore[arg-type]
            if (lo, hi) == (m_lo, m_hi):
                members.append((m.module_name, m.n_heads or 1, m_hi))
                plan.zero_member[m.module_name] = dh.resid  # type: ignore[assignment]
    for dh in pm.dest_hooks:
        m = dh.module
        m_lo, m_hi = plan.span[m.module_name]
        for resid, (members, lo, hi) in plan.zero_groups.items():
            if (not dh.projected and wants(m.module_name) and m_lo == lo and m_hi >= hi
                    and m.block == mods[members[0][0]].block):  # fmt: skip
                members.append((m.module_name, 1, m_hi))
                plan.zero_member[m.module_name] = resid


def _clean_start_plan(pm: PatchableModel, full: dict[str, torch.Tensor], patch: torch.Tensor | None,
                      clean: CleanRun | None, start: int, copies: int, stacked: bool,
                      nonzero: dict[str, bool]) -> Plan:  # fmt: skip
    if clean is None or not clean.partial:
        raise ValueError("start= needs a CleanRun that allows partial forwards (clean_run(...).partial)")
    if torch.is_grad_enabled() and any(m.requires_grad for m in full.values()):
        raise ValueError("a pass from a clean start gives no gradients; run the full model instead")
    mods = pm.dest_modules
    early = [n for n, m in mods.items() if nonzero[n] and m.block < start]
    if early:
        raise ValueError(f"a pass starting at block {start} needs every mask before it at 0; "
                         f"{early[0]} (block {mods[early[0]].block}) has nonzero masks")
    nf, n = clean.n_fixed[start], len(pm.srcs)
    patch = (clean.patch if patch is None else patch)[nf:]  # the live sources' rows
    if clean.skip and patch.shape[2] > 1:
        patch = patch[:, :, clean.skip :]  # the positions a pass computes
    span = {name: (max(m.src_lo, nf), m.src_hi) for name, m in mods.items()}
    active = {name for name, m in mods.items() if nonzero[name] and m.block >= start}
    return Plan(full, patch, None, copies, stacked, nf, n, span, nonzero, active,
                start=start, clean=clean)  # fmt: skip
