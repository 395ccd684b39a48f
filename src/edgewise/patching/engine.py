"""The patching engine: a :class:`Plan` built once from the graph, the masks and the patch,
and the hooks of :func:`patching` that carry it out in every forward pass.

Every pass computes ``delta_s = patch_s - current_s`` once per source, as the source's
hook fires, into one buffer ``[n, c*b, p, d]`` (``c`` stacked copies of the batch), and
every destination adds ``sum_s mask[d, s] * delta_s`` to its input. The plan decides,
per destination, how:

- **autograd add** (:class:`~edgewise.patching.autograd.PatchAdd`): the patch equation
  with hand-written gradients for the masks and the current source outputs;
- **fused block**: a block's Q/K/V destinations (patched after their projection, see
  :mod:`edgewise.patching.sites`) and the part of its other inputs that reads the same
  sources, in one product over ``delta``;
- **gradient at mask 0**: nothing changes in the forward pass; the backward gives the
  masks' gradients (:class:`~edgewise.patching.autograd.ProjectedMaskGrad`, or gathered
  per block: ``BlockGrads``);
- **from a clean start**: a pass that starts at block ``b`` (:class:`CleanRun`) adds the
  fixed differences of the sources before ``b`` (cached while a mask does not change)
  and the live ones of the sources from ``b`` on; no gradients.

Destinations whose masks are all 0 and need no gradient get no hook at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from edgewise.models.bridge_blocks import BlockInputsUnknown
from edgewise.patching.autograd import (
    BlockGrads,
    BlockSink,
    PatchAdd,
    ProjectedMaskGrad,
    StashGrad,
)
from edgewise.patching.plan import CleanRun, Plan, make_plan
from edgewise.patching.sites import DestHook, SrcHook

if TYPE_CHECKING:
    from edgewise.patching.model import PatchableModel


class SourcesDone(Exception):
    """Raised by a hook to end a forward pass whose remaining work is not needed."""


def clean_run(pm: PatchableModel, tokens: torch.Tensor, patch_src_outs: torch.Tensor,
              full_out: torch.Tensor | None = None, partial: bool | None = None) -> CleanRun:  # fmt: skip
    """The clean pass of ``tokens`` ``[B, S]`` against ``patch_src_outs``
    ``[n_srcs, B, S, d_model]``. Passes may start mid-model where the adapter can run
    partial forwards (``partial=False`` forbids it) and, given ``full_out`` (the
    unpatched ``logits[out_slice]``), starting at the first and last block reproduces it."""
    can = pm.adapter.runs_partial_forwards and partial is not False
    n_layers = int(pm.cfg.n_layers)
    points: dict[Any, str] = {}
    if can:
        for b in range(n_layers):
            points[b] = f"blocks.{b}.hook_resid_pre"
    with pm.adapter.recording_keys_values() if can and pm.adapter.runs_prefix_skip else nullcontext({}) as kv:
        outs, captured = capture(pm, tokens, resid_points=points)
    resid = {b: captured[b] for b in range(n_layers) if b in captured}
    n_srcs = len(pm.srcs)
    n_fixed = {}
    for b in range(n_layers):
        los = [m.src_lo for m in pm.graph.src_modules if (m.block or 0) >= b]
        n_fixed[b] = min(los) if los else n_srcs
    kwargs: dict[str, Any] = {}
    unembed_weight = None
    if can:
        with torch.inference_mode():
            try:
                kwargs = pm.adapter.start_kwargs(tokens)
            except BlockInputsUnknown:  # a bridge whose blocks cannot be called on their own
                can = False
            unembed_weight = pm.adapter.unembed_weight() if can else None
    clean = CleanRun(tokens, patch_src_outs, (patch_src_outs - outs).contiguous(), resid, n_fixed, kwargs,
                     partial=can and len(resid) == n_layers, unembed_weight=unembed_weight)  # fmt: skip
    # a causal model whose every block took its keys and values through the recorder, and
    # whose other block inputs can be cut to the positions a pass computes
    if clean.partial and len(kv) == n_layers:
        skip = _clean_prefix(pm, clean.delta)
        cut = pm.adapter.cut_start_kwargs(kwargs, skip, int(tokens.shape[1])) if skip else None
        if cut is not None:
            clean.skip, clean.kwargs = skip, cut
            clean.past = {b: (k[..., :skip, :].contiguous(), v[..., :skip, :].contiguous())
                          for b, (k, v) in kv.items()}  # fmt: skip
    if clean.partial and full_out is not None:
        clean.partial = _starts_match(pm, clean, full_out)
    return clean


def _clean_prefix(pm: PatchableModel, delta: torch.Tensor) -> int:
    """The first position where some source's patch differs from its clean output
    (``delta`` ``[n_srcs, B, S, d]``) or the output is read, whichever comes first: a
    causal model computes every position before it as in the clean run, whatever the
    masks."""
    where = pm.out_slice[1] if len(pm.out_slice) > 1 else slice(None)
    read = range(delta.shape[2])[where]
    first_read = read if isinstance(read, int) else min(read, default=0)
    return min(first_changed_position(delta), first_read)


def first_changed_position(delta: torch.Tensor) -> int:
    """The first position where some source's patch differs from its clean output, in
    some prompt (``delta`` ``[n_srcs, B, S, d]``; ``S`` if none does)."""
    differs = delta.ne(0).any(-1).any(1).any(0).nonzero()  # [k, 1] positions
    return int(differs[0, 0]) if len(differs) else delta.shape[2]


def _starts_match(pm: PatchableModel, clean: CleanRun, full_out: torch.Tensor) -> bool:
    """Whether starting at the first and at the last block reproduces the full model."""
    dtype = clean.delta.dtype
    zero = pm.new_masks(0.0, dtype=dtype)
    tol = math.sqrt(torch.finfo(dtype).eps) if dtype.is_floating_point else 0.0
    try:
        for b in sorted({0, int(pm.cfg.n_layers) - 1}):
            out = patched_outputs(pm, clean.tokens, zero, clean.patch, clean=clean, start=b)
            scale = 1.0 + float(full_out.abs().max())
            if out.shape != full_out.shape or not torch.allclose(
                out.double(), full_out.double(), rtol=0, atol=tol * scale
            ):
                return False
    except Exception:  # a TransformerLens version that cannot start mid-model
        return False
    return True


# ---------------------------------------------------------------------------- capture
def capture(
    pm: PatchableModel,
    tokens: torch.Tensor,
    src_range: tuple[int, int] | None = None,
    resid_points: Mapping[Any, str] | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[Any, torch.Tensor]]:
    """The outputs of sources ``src_range`` (default all) ``[hi - lo, batch, seq,
    d_model]`` on ``tokens`` (written into ``out`` when it has that shape) and a copy of
    the output of each hook in ``resid_points`` (key -> hook name). The forward pass
    stops once everything is captured (the unembedding never runs)."""
    blo, bhi = pm.block_range(src_range)
    hooks = [h for h in pm.src_hooks if blo <= h.module.src_lo and h.module.src_hi <= bhi]
    resid_points = dict(resid_points or {})
    result: list[torch.Tensor] = []
    resid: dict[Any, torch.Tensor] = {}
    seen: set[int] = set()

    def done() -> None:
        if len(seen) == len(hooks) and len(resid) == len(resid_points):
            raise SourcesDone  # the rest of the model is not needed

    def src_hook(h: SrcHook):
        def hook(_m: nn.Module, _i: Any, o: torch.Tensor) -> None:
            if not result:  # the first source: [n_srcs, batch, seq, d_model]
                shape = (bhi - blo, o.shape[0], o.shape[1], int(pm.cfg.d_model))
                ok = out is not None and (out.shape, out.dtype, out.device) == (shape, o.dtype, o.device)
                if not ok:
                    with torch.inference_mode(False):  # a normal tensor, usable with autograd
                        result.append(torch.empty(shape, dtype=o.dtype, device=o.device))
                else:
                    result.append(out)  # type: ignore[arg-type]
            h.outputs(o, into=result[0][h.module.src_lo - blo : h.module.src_hi - blo])
            seen.add(h.module.src_lo)
            done()

        return hook

    def resid_hook(key: Any):
        def hook(_m: nn.Module, _i: Any, o: torch.Tensor) -> None:
            resid[key] = o.clone()
            done()

        return hook

    points = [(h.point, src_hook(h)) for h in hooks]
    points += [(name, resid_hook(key)) for key, name in resid_points.items()]
    with _hooks(pm, points), torch.inference_mode():
        try:
            pm(tokens)
        except SourcesDone:
            pass
    if len(seen) != len(hooks):
        raise RuntimeError("some source hooks did not fire in the forward pass")
    return result[0], resid


@contextmanager
def _hooks(pm: PatchableModel, points: list[tuple[str, Any]]) -> Iterator[None]:
    """Forward hooks at the named hook points, removed on exit (also after an error)."""
    handles = []
    try:
        for name, fn in points:
            handles.append(pm.adapter.hook_point(name).register_forward_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------- the pass
@dataclass
class _Run:
    """One forward pass: the ``patch - current`` differences of the tracked sources
    ``[hi - lo, c*b, seq, d_model]``, and (when gradients are on) the current source
    outputs, so gradients flow back to them."""

    delta: torch.Tensor | None = None
    taken: torch.Tensor | None = None  # delta's memory, from the model's buffer cache
    current: dict[int, torch.Tensor] = field(default_factory=dict)
    resid: dict[str, torch.Tensor] = field(default_factory=dict)
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    sinks: dict[str, BlockGrads] = field(default_factory=dict)


class _Pass:
    """The hooks that carry out a plan in each forward pass of a patching context."""

    def __init__(self, pm: PatchableModel, plan: Plan):
        self.pm, self.plan, self.run = pm, plan, _Run()
        self.pos = "" if pm.seq_len is None else "p"
        self.first_src = pm.src_hooks[0]
        self.projected_names = {dh.module.module_name for dh in pm.dest_hooks if dh.projected}

    def records_graph(self) -> bool:
        """Whether this pass builds an autograd graph (gradients on, and a mask or a
        parameter that needs one): asked only when gradients are on."""
        return torch.is_grad_enabled() and (
            any(m.requires_grad for m in self.plan.masks.values())
            or any(p.requires_grad for p in self.pm.wrapped_model.parameters()))  # fmt: skip

    # -- buffer
    def begin(self, batch: int, seq: int, dtype: torch.dtype, device: torch.device) -> None:
        """A new pass: its difference buffer. Inference passes reuse the model's buffer
        (given back at the end of the context); passes with an autograd graph get their
        own, which the graph keeps until its backward is done."""
        plan, run = self.plan, self.run
        if batch % plan.copies:
            raise ValueError(
                f"masks stack {plan.copies} circuits, so the batch ({batch} prompts) must "
                f"hold {plan.copies} copies of the prompts: use tokens.repeat({plan.copies}, 1)"
            )
        run.current, run.inputs, run.sinks = {}, {}, {}
        if plan.fixed_delta is not None:
            run.delta = plan.fixed_delta
            return
        shape = (plan.hi - plan.lo, batch, seq, int(self.pm.cfg.d_model))
        graph = self.records_graph()
        same = run.delta is not None and (run.delta.shape, run.delta.dtype) == (shape, dtype)
        if run.taken is not None and same and not graph:
            return  # the previous inference pass of this context is done with it
        self.end()
        if graph:
            run.delta = torch.empty(shape, dtype=dtype, device=device)
        else:
            numel = math.prod(shape)
            run.taken = self.pm.scratch.take("delta", numel, dtype, device)
            run.delta = run.taken[:numel].view(shape)

    def end(self) -> None:
        """Give an inference pass's buffer back to the model's cache."""
        run = self.run
        if run.taken is not None:
            self.pm.scratch.give_back("delta", run.taken)
        run.delta, run.taken = None, None

    # -- sources
    def src_hook(self, h: SrcHook):
        plan, run, mod = self.plan, self.run, h.module
        tracked = plan.lo <= mod.src_lo and mod.src_hi <= plan.hi
        lo, hi = mod.src_lo - plan.lo, mod.src_hi - plan.lo  # rows of the pass's buffer

        def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            if h is self.first_src and plan.start is None:  # a new forward pass starts
                self.begin(out.shape[0], out.shape[1], out.dtype, out.device)
            if plan.fixed_delta is not None or not tracked:
                return
            assert run.delta is not None
            rows = run.delta[lo:hi]  # [n, c*b, s, d], contiguous
            # current outputs are kept for the gradient only where some mask is nonzero
            # (at mask 0 their gradient through the patch is 0)
            grad = torch.is_grad_enabled() and plan.track_current and plan.start is None
            outs = h.outputs(out) if grad else None
            with torch.no_grad():
                cur = rows if outs is None else outs
                if outs is None:
                    h.outputs(out, into=rows)
                assert plan.patch is not None
                patch = plan.patch[lo:hi]
                c = plan.copies
                per_copy = c > 1 and patch.shape[1] == rows.shape[1]  # one patch per prompt
                torch.sub(
                    patch.unflatten(1, (c, -1)) if per_copy else patch[:, None],
                    cur.unflatten(1, (c, -1)),
                    out=rows.unflatten(1, (c, -1)),
                )
                if plan.src_dims is not None:  # only some dimensions of these sources patched
                    if grad and outs is not None and outs.requires_grad:
                        raise RuntimeError("src_dims is for inference passes: the backward would ignore it")
                    dims = plan.src_dims[:, lo:hi].to(rows.dtype)  # [c | 1, n, d]
                    rows.unflatten(1, (c, -1)).mul_(dims.transpose(0, 1)[:, :, None, None])
            if outs is not None and outs.requires_grad:
                run.current[lo] = outs

        return hook

    def src_args(self, lo: int, hi: int) -> tuple:
        """``(groups, *current)`` for ``PatchAdd`` over buffer rows ``[lo, hi)``."""
        base = self.plan.lo
        groups = [(s.src_lo - base - lo, s.n_heads or 1) for s in self.pm.graph.src_modules
                  if lo <= s.src_lo - base < hi]  # fmt: skip
        # a source whose output needs no gradient (frozen weights upstream, e.g. the
        # embeddings) is left out; every other source still gets -mask * grad
        kept = [(g, self.run.current.get(lo + g[0])) for g in groups]
        kept = [(g, c) for g, c in kept if c is not None]
        return ([g for g, _ in kept], *(c for _, c in kept))

    # -- fused blocks
    def run_group(self, key: tuple[str, int, int]) -> None:
        """The patched per-head inputs ``[h, c*b, p, d]`` of the group's projected
        destinations, and the group's sources' part of its other inputs."""
        plan, run = self.plan, self.run
        proj, inputs = plan.fused[key]
        name, lo, hi = key
        r = run.resid[name]
        c = plan.copies
        parts = [plan.masks[n].expand(c, *plan.masks[n].shape[1:]) for n in proj]
        parts += [plan.masks[n][..., : hi - lo].unsqueeze(-2).expand(c, *plan.masks[n].shape[1:-1], 1, hi - lo)
                  for n in inputs]  # fmt: skip
        eq = f"c{self.pos}hn,ncbpd->hcbpd"  # patched inputs heads first
        b0 = plan.lo
        z = PatchAdd.apply(r, torch.cat(parts, dim=-2), run.delta[lo - b0 : hi - b0], eq,  # type: ignore[index]
                           *self.src_args(lo - b0, hi - b0))  # fmt: skip
        sizes = [self.pm.dest_modules[n].n_heads or 1 for n in proj] + [1] * len(inputs)
        outs = z.split(sizes)
        run.inputs.update(zip(proj, outs))
        run.inputs.update((n, o[0] - r) for n, o in zip(inputs, outs[len(proj) :]))

    # -- destinations
    def dest_hook(self, dh: DestHook):
        plan, run = self.plan, self.run
        mod = dh.module
        name = mod.module_name
        lo, hi = plan.span[name]
        b0 = plan.lo
        head = "" if mod.n_heads is None else "h"
        eq = f"c{self.pos}{head}n,ncbpd->cbp{head}d"
        # the mask gradient of a projected destination at mask 0 (see ProjectedMaskGrad)
        eq_grad = None if (not self.pos and not plan.stacked) else f"hcbpd,ncbpd->c{self.pos}hn"
        mask = plan.masks[name]

        def hook(_m: nn.Module, _i: Any, x: torch.Tensor) -> torch.Tensor:
            assert run.delta is not None
            if hi <= lo:  # no tracked source of this destination
                return x
            key = plan.group_of.get(name)
            if key is not None and name not in run.inputs:
                self.run_group(key)
            sink = run.sinks.get(plan.zero_member.get(name, ""))
            if not dh.projected:
                if key is None and sink is not None:
                    return StashGrad.apply(x, sink, name)
                if key is None:
                    return PatchAdd.apply(x, mask, run.delta[lo - b0 : hi - b0], eq,
                                          *self.src_args(lo - b0, hi - b0))  # fmt: skip
                # the group's part, then the sources after the group's
                x = x + run.inputs.pop(name)
                g_hi = key[2]
                if g_hi == hi:
                    return x
                return PatchAdd.apply(x, mask[..., g_hi - lo :], run.delta[g_hi - b0 : hi - b0], eq,
                                      *self.src_args(g_hi - b0, hi - b0))  # fmt: skip
            if key is None:  # all masks 0
                if torch.is_grad_enabled() and mask.requires_grad:
                    r = run.resid[dh.resid]  # type: ignore[index]
                    x4 = x.unflatten(-1, (mod.n_heads or 1, -1)) if dh.flat else x  # [b, p, h, d_head]
                    out = ProjectedMaskGrad.apply(
                        x4, mask, run.delta[lo - b0 : hi - b0], r.detach(), dh.weight().detach(),
                        eq_grad, dh.norm, self.pm.scratch, sink, name, dh.shift().detach(),
                    )  # fmt: skip
                    return out.flatten(-2) if dh.flat else out
                return x
            return dh.project(x, run.inputs.pop(name))

        return hook

    def clean_start_dest_hook(self, dh: DestHook):
        """A destination of a pass from a clean start: ``x`` plus the fixed sources' part
        (cached while the mask is unchanged) plus the live sources' (no gradients)."""
        plan, run, clean = self.plan, self.run, self.plan.clean
        assert clean is not None
        mod = dh.module
        name = mod.module_name
        mask = plan.masks[name]
        per_copy = mask.shape[0] > 1
        k_ = "k" if per_copy else ""
        h = "" if mod.n_heads is None else "h"
        lo, hi, nf = mod.src_lo, mod.src_hi, plan.lo
        f_hi, l_lo = min(hi, nf), max(lo, nf)  # fixed sources [lo, f_hi), live [l_lo, hi)
        m = (mask if per_copy else mask[0]).to(clean.delta.dtype)
        heads = None  # projected destinations: only heads with a nonzero mask row
        if dh.projected:
            rows = (m != 0).reshape(-1, *m.shape[-2:]).any(0).any(-1)
            if not bool(rows.all()):
                heads = rows.nonzero().flatten()
                m = m.index_select(-2, heads)
        pos, skip = self.pos, clean.skip
        if pos and skip:  # per-position masks: the positions the pass computes
            m = m[:, skip:] if per_copy else m[skip:]
        fixed_delta = clean.delta[:, :, skip:] if skip else clean.delta

        def fixed() -> torch.Tensor:
            """The fixed sources' part ``[k | 1, B, S, (h,) d]``."""
            given = plan.given[name]  # the caller's tensor: the same object while unchanged
            key = (given, given._version, nf)
            hit = clean.cache.get(name)
            if not per_copy and hit is not None and hit[0] is key[0] and hit[1:3] == key[1:]:
                return hit[3]
            add = torch.einsum(f"{k_}{pos}{h}n,nbpd->{k_}bp{h}d", m[..., : f_hi - lo], fixed_delta[lo:f_hi])
            add = add if per_copy else add[None]
            if not per_copy:
                clean.cache[name] = (*key, add)
            return add

        def hook(_m: nn.Module, _i: Any, x: torch.Tensor) -> torch.Tensor:
            if heads is not None and heads.numel() == 0:
                return x  # every mask row is 0
            k = plan.copies
            add = fixed() if lo < f_hi else None
            if l_lo < hi:
                delta = run.delta[l_lo - nf : hi - nf].unflatten(1, (k, -1))  # type: ignore[index]
                live = torch.einsum(f"{k_}{pos}{h}n,nkbpd->kbp{h}d", m[..., l_lo - lo :], delta)
                add = live if add is None else add + live
            if add is None:
                return x
            if not dh.projected:
                return (x.unflatten(0, (k, -1)) + add).flatten(0, 1)
            r = run.resid[dh.resid]  # type: ignore[index]
            z = r.unflatten(0, (k, -1)).unsqueeze(-2) + add  # [k, B, S, h, d]
            return dh.project(x, z.movedim(3, 0).flatten(1, 2), heads)

        return hook

    def resid_hook(self, name: str):
        plan, run = self.plan, self.run

        def hook(_m: nn.Module, _i: Any, r: torch.Tensor) -> torch.Tensor | None:
            run.resid[name] = r
            if name not in plan.zero_groups or not torch.is_grad_enabled():
                return None
            members, lo, hi = plan.zero_groups[name]
            b0 = plan.lo
            rel = [(n, rows, src_hi - b0) for n, rows, src_hi in members]  # buffer rows
            sink = run.sinks[name] = BlockGrads(rel, lo - b0, hi - b0, self.pm.scratch,
                                                self.projected_names, input_grads=not plan.param_grads)  # fmt: skip
            return BlockSink.apply(r, sink, run.delta, *(plan.masks[n][0] for n, _, _ in members))

        return hook

    def hooks(self) -> list[tuple[str, Any]]:
        """(hook point, function) of every hook the plan needs."""
        plan, pm = self.plan, self.pm
        points: list[tuple[str, Any]] = []
        for h in pm.src_hooks:
            if plan.start is None or (h.module.src_lo >= plan.lo):
                points.append((h.point, self.src_hook(h)))
        dests = [dh for dh in pm.dest_hooks if dh.module.module_name in plan.active]
        for name in sorted({dh.resid for dh in dests if dh.resid}):
            points.append((name, self.resid_hook(name)))
        for dh in dests:
            fn = self.dest_hook(dh) if plan.start is None else self.clean_start_dest_hook(dh)
            points.append((dh.point, fn))
        return points


@contextmanager
def patching(pm: PatchableModel, plan: Plan) -> Iterator[_Pass]:
    """Every forward pass within this context carries out ``plan``; the hooks are removed
    and an inference pass's buffer given back on exit, also after an exception."""
    p = _Pass(pm, plan)
    try:
        with _hooks(pm, p.hooks()):
            yield p
    finally:
        p.end()
        p.run = _Run()


def patched_outputs(
    pm: PatchableModel,
    tokens: torch.Tensor,
    masks: Mapping[str, torch.Tensor],
    patch_src_outs: torch.Tensor | None,
    clean: CleanRun | None = None,
    start: int | None = None,
) -> torch.Tensor:
    """``logits[out_slice]`` of ``tokens`` with edges patched by ``masks`` (inference).

    With ``start=b`` and ``clean`` (the clean run of the same prompts, ``tokens`` its
    ``c`` copies ``clean.tokens.repeat(c, 1)``), the pass starts at block ``b`` from the
    clean residual stream: every mask before block ``b`` must be 0."""
    with torch.inference_mode():
        if start is None:
            with patching(pm, make_plan(pm, masks, patch_src_outs)):
                return pm.outputs(tokens)
        plan = make_plan(pm, masks, patch_src_outs, clean=clean, start=start)
        assert clean is not None
        k, skip = plan.copies, clean.skip
        b, s = clean.tokens.shape
        with patching(pm, plan) as p:
            p.begin(k * b, s - skip, clean.delta.dtype, clean.delta.device)
            resid = clean.resid[start][:, skip:].repeat(k, 1, 1)
            kwargs = pm.adapter.repeat_start_kwargs(clean.kwargs, k)
            past = None
            if skip:
                past = [None] * start + [(kv.repeat(k, 1, 1, 1), vv.repeat(k, 1, 1, 1))
                                         for kv, vv in (clean.past[i] for i in range(start, int(pm.cfg.n_layers)))]  # fmt: skip
            out_slice = _shifted(pm.out_slice, skip, s)
            return pm.adapter.forward_from(start, resid, out_slice, clean.unembed_weight, past=past, **kwargs)


def _shifted(out_slice: tuple[slice | int, ...], skip: int, seq: int) -> tuple[slice | int, ...]:
    """``out_slice`` for logits of positions ``[skip, seq)`` only (it reads none before)."""
    if not skip or len(out_slice) < 2:
        return out_slice
    where = out_slice[1]
    if isinstance(where, int):
        return (out_slice[0], where % seq - skip, *out_slice[2:])
    read = range(seq)[where]
    return (out_slice[0], slice(read.start - skip, read.stop - skip, read.step), *out_slice[2:])
