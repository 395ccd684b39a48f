"""Patchable models: every edge patched in one forward pass, gradients for every mask in
one backward pass.

A destination's input is a sum of upstream source outputs. Patching edge ``(s, d)``
replaces that source's contribution to that one destination::

    input_d = current_input_d + sum_s mask[d, s] * (patch_out_s - current_out_s)

``mask = 0`` leaves the edge as it is, ``mask = 1`` replaces it with the patch
activation, values in between interpolate. Masks and patches are explicit arguments of
:meth:`PatchableModel.patch` (a context manager that always removes its hooks), never
state left on the model.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from edgewise.checks import require_device, require_int
from edgewise.graph.build import DestModule, Graph, GraphSpec, SrcModule, build_graph
from edgewise.models.adapter import HookAdapter
from edgewise.patching.sites import (
    DestHook,
    Norm,
    SrcHook,
    dest_hooks,
    needed_flags,
    projected_dests_available,
    src_hooks,
    z_hooks_available,
)
from edgewise.types import DestNode, Edge, EdgeList, Node, PruneScores, SrcNode

SliceOutput = Literal["last_seq", "not_first_seq"] | bool | None


@dataclass
class _Run:
    """State of one patched forward pass: the ``patch - current`` difference of every
    source computed so far, ``[n_srcs, batch, seq, d_model]``, and (when gradients are
    on) the current source outputs, so gradients flow back to them."""

    delta: torch.Tensor | None = None
    current: dict[int, torch.Tensor] = field(default_factory=dict)
    resid: dict[str, torch.Tensor] = field(default_factory=dict)
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    sinks: dict[str, _BlockGrads] = field(default_factory=dict)


def _storage_refs(t: torch.Tensor) -> int | None:
    """How many tensors share ``t``'s memory (None where torch does not tell)."""
    try:
        return int(torch._C._storage_Use_Count(t.untyped_storage()._cdata))
    except (AttributeError, RuntimeError):
        return None


class _SourcesDone(Exception):
    """Raised by a hook to end a forward pass whose remaining work is not needed."""


class _PatchAdd(torch.autograd.Function):
    """``x + einsum(eq, mask, delta[lo:hi])`` with hand-written gradients.

    Masks carry a leading "copies" dim ``c``: the batch holds ``c`` copies of the
    prompts, copy ``i`` patched by ``mask[i]`` (so many circuits run in one pass).
    ``delta`` is ``[n, c*b, p, d]``; ``x`` is laid out as ``eq``'s output: ``[c*b, p,
    (h,) d]`` (``...->cbp(h)d``) or heads first, ``[h, c*b, p, d]`` (``...->hcbpd``).

    The gradient of an edge's mask is ``sum_{batch, pos} grad_input_d . delta_s``
    (exactly edge attribution patching at ``mask = 0``). The gradient flowing to the
    current output of source ``s`` is ``-mask[d, s] * grad_input_d``; ``current`` holds
    one tensor per source module, ``[n, c*b, p, d]`` (``n`` sources, heads first).
    """

    @staticmethod
    def forward(ctx, x, mask, delta, eq, groups, *current):  # type: ignore[override]
        ctx.eq, ctx.groups = eq, groups
        ctx.save_for_backward(mask)
        # a view of the run's buffer: its rows [lo, hi) never change again in this pass
        ctx.delta = delta.view(delta.shape[0], mask.shape[0], -1, *delta.shape[2:])
        rhs = eq.split("->")[1]
        # heads-first output from an x without heads: x is the same for every head
        ctx.bcast = rhs[0] == "h" and x.dim() == len(rhs) - 2
        ctx.zero = not bool(mask.any())
        n, k = delta.shape[0], delta[0].numel()
        rows = mask.numel() // n
        if ctx.zero and not ctx.bcast:
            return x.view_as(x)  # an identity: a view, no copy
        if mask.shape[0] == 1 and "p" not in eq.split(",")[0] and (rhs[0] == "h" or "h" not in rhs):
            # one copy, no positions: one fused [rows, n] @ [n, b*p*d] + x
            x2 = x.reshape(-1, k)
            out = torch.addmm(x2, mask.reshape(rows, n).to(x.dtype), delta.reshape(n, k))
            return out.view(rows, *x.shape) if ctx.bcast else out.view(x.shape)
        add = torch.einsum(eq, mask.to(x.dtype), ctx.delta)  # eq's output layout, maybe a view
        if ctx.bcast:
            return (x.reshape(add.shape[1:]) + add).reshape(add.shape[0], *x.shape)
        return (x.reshape(add.shape) + add).reshape(x.shape)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        lhs, rhs = ctx.eq.split("->")
        m_sub, d_sub = lhs.split(",")
        delta = ctx.delta  # [n, c, b, p, d]
        copies = mask.shape[0]
        sizes = dict(zip(d_sub, delta.shape)) | {"h": g.numel() // delta[0].numel()}
        gv = g.reshape([sizes[a] for a in rhs])
        grad_mask = None
        if ctx.needs_input_grad[1]:
            acc = torch.promote_types(g.dtype, torch.float32)  # never below float32
            delta = delta.to(acc)
            if copies == 1 and "p" not in m_sub:  # [heads, b*p*d] @ [b*p*d, n], no copy of delta
                gh = gv.to(acc).movedim(rhs.index("h"), 0) if "h" in rhs else gv.to(acc)[None]
                flat = torch.mm(gh.reshape(gh.shape[0], -1), delta.reshape(delta.shape[0], -1).t())
                grad_mask = flat.view(mask.shape)
            else:
                grad_mask = torch.einsum(f"{rhs},{d_sub}->{m_sub}", gv.to(acc), delta)
        grads_current: list[torch.Tensor | None] = [None] * len(ctx.groups)
        if not ctx.zero:
            m = mask.to(g.dtype)
            for i, (start, count) in enumerate(ctx.groups):
                if not ctx.needs_input_grad[5 + i]:
                    continue
                # -sum over the destination's heads of mask * grad: [n, c, b, p, d]
                grad = -torch.einsum(f"{m_sub},{rhs}->{d_sub}", m[..., start : start + count], gv)
                grads_current[i] = grad.flatten(1, 2)
        grad_x = g.sum(0) if ctx.bcast else g
        return (grad_x, grad_mask, None, None, None, *grads_current)


class _ProjectedMaskGrad(torch.autograd.Function):
    """Identity on ``x`` (a projected destination whose masks are all 0) whose backward
    gives the masks' gradient without building per-head inputs::

        dL/dmask[h, s] = sum_{batch, pos} delta_s . J_N(r)^T (dL/dX_h @ W_h^T)

    ``J_N(r)^T u = (v - mean(v) - x_hat mean(v * x_hat))`` with ``v = gamma * u / sigma``
    (LayerNorm; RMSNorm drops the mean term; no norm: ``u``). ``v - mean(v)`` for all heads
    is one batched matmul of the (small) output gradient, scaled per token, with
    ``W * gamma`` centred over ``d_model``; ``mean(v * x_hat)`` comes from the forward's
    ``X`` (``x_hat @ (W * gamma) = X - b - beta @ W``), so one pass over ``v`` remains.
    At ``mask = 0`` no other input of the patch has a gradient.
    """

    @staticmethod
    def forward(ctx, x, mask, delta, r, w, eq, norm, workspace, sink, name, shift):  # type: ignore[override]
        ctx.eq, ctx.norm, ctx.workspace, ctx.sink, ctx.name = eq, norm, workspace, sink, name
        ctx.delta = delta.view(delta.shape[0], mask.shape[0], -1, *delta.shape[2:])
        # x_hat @ (W * gamma) = X - b - beta @ W: the projection of x_hat, from the forward
        ctx.save_for_backward(mask, r, w, x.detach(), shift)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        mask, r, w, x, shift = ctx.saved_tensors
        norm: Norm = ctx.norm
        grad_x = g
        acc = torch.promote_types(g.dtype, torch.float32)  # never below float32
        b, p, h, k = g.shape
        d, t = r.shape[-1], b * p
        w = w.to(acc)
        if norm.kind is not None:
            x_hat, inv = norm.normalize(r)  # [b, p, d], [b, p, 1]
            x_hat, inv = x_hat.to(acc).reshape(t, d), inv.to(acc)
            gamma = norm.weight()
            if gamma is not None:
                w = w * gamma.to(acc)[None, :, None]
            if norm.centred:  # v - mean_d(v) = gs @ (w - mean_d(w))^T: centre the small w
                w = w - w.mean(1, keepdim=True)
            g = g.to(acc) * inv.unsqueeze(-2)
        gs = g.to(acc).permute(2, 0, 1, 3).reshape(h, t, k)
        # [h, b*p, d], in one buffer shared by the destinations of this pass: a fresh
        # allocation this size costs page faults on every call on a CPU
        sink: _BlockGrads | None = ctx.sink
        if sink is not None:  # rows of the block's gradient matrix (see _BlockSink)
            v = sink.rows(ctx, h, t * d, acc, gs.device).view(h, t, d)
        else:
            key = (h, t, d, acc, gs.device)
            v = ctx.workspace.get(key)
            if v is None:
                v = ctx.workspace[key] = torch.empty(h, t, d, dtype=acc, device=gs.device)
        torch.bmm(gs, w.transpose(1, 2), out=v)
        if norm.kind is not None:
            if x.dtype in (torch.float32, torch.float64):
                # sum_d v x_hat = sum_k gs (x_hat @ (W * gamma)): from X, [h, b*p, k]
                proj = (x.to(acc) - shift.to(acc)).permute(2, 0, 1, 3).reshape(h, t, k)
                coef = (gs * proj).sum(-1).div_(d)
            else:  # half precision X is too coarse for this: the product over d_model
                coef = torch.einsum("htd,td->ht", v, x_hat).div_(d)
            v.addcmul_(coef.unsqueeze(-1), x_hat.unsqueeze(0), value=-1.0)
        if sink is not None:
            if sink.input_grads:  # the block's sink adds sum(rows) to the residual gradient
                grad_x = None
            return grad_x, None, None, None, None, None, None, None, None, None, None
        delta = ctx.delta.to(acc)  # [n, c, b, p, d]
        n, c = delta.shape[0], delta.shape[1]
        if ctx.eq is None:  # one copy, no positions: [h, b*p*d] @ [b*p*d, n]
            grad = torch.mm(v.view(h, -1), delta.reshape(n, -1).t()).view(mask.shape)
        else:
            grad = torch.einsum(ctx.eq, v.view(h, c, -1, p, d), delta)
        return grad_x, grad, None, None, None, None, None, None, None, None, None


class _BlockGrads:
    """The mask gradients of one block's destinations at mask 0, gathered so that one
    product reads the patch buffer once for all of them (one copy, no token positions).

    Each destination's backward writes its rows of ``G`` (``[rows, b*p*d]``: the gradient
    at its input, per head), and :class:`_BlockSink`, which every one of them depends on,
    computes ``G @ delta[lo:hi]^T`` and hands each mask its gradient. Destinations that
    read more sources (an MLP reads the block's heads too) get those columns separately.

    With ``input_grads``, the rows of the projected (Q/K/V) destinations also stand in for
    the model's own backward through ``ln1`` and the Q/K/V projection: their sum is exactly
    the gradient that path gives the residual stream (``sum_h J_N^T (dL/dX_h W_h^T)``), so
    those destinations pass no gradient to it and the sink adds the sum instead. The
    projection's weights then get no gradient.
    """

    def __init__(self, members: list[tuple[str, int, int]], lo: int, hi: int,
                 workspace: dict, projected: set[str], input_grads: bool) -> None:  # fmt: skip
        self.members = members  # (name, n rows, src_hi)
        self.lo, self.hi, self.workspace = lo, hi, workspace
        self.projected, self.input_grads = projected, input_grads
        self.offsets: dict[str, int] = {}
        n = 0
        for name, rows, _ in members:
            self.offsets[name] = n
            n += rows
        self.n_rows = n
        self.buf: torch.Tensor | None = None
        self.filled: set[str] = set()

    def rows(self, ctx: Any, n_rows: int, k: int, dtype: torch.dtype, device: Any) -> torch.Tensor:
        if self.buf is None:  # one buffer for all blocks of a pass: they finish in turn
            key, size = ("block grads", dtype, device), self.n_rows * k
            if self.workspace.get((key, "busy")):  # another pass's block holds it: a private one
                buf = torch.empty(size, dtype=dtype, device=device)
            else:
                buf = self.workspace.pop(key, None)
                if buf is None or buf.numel() < size:
                    del buf  # too small: released before the new one comes
                    buf = torch.empty(size, dtype=dtype, device=device)
                self.workspace[key], self.workspace[(key, "busy")] = buf, True
            self.key, self.buf = key, buf[:size].view(self.n_rows, k)
        self.filled.add(ctx.name)
        lo = self.offsets[ctx.name]
        return self.buf[lo : lo + n_rows]

    def release(self) -> None:
        cached = self.workspace.get(self.key) if self.buf is not None else None
        if cached is not None and cached.data_ptr() == self.buf.data_ptr():  # type: ignore[union-attr]
            self.workspace[(self.key, "busy")] = False
        self.buf, self.filled = None, set()


class _StashGrad(torch.autograd.Function):
    """Identity on an input destination ``x`` whose masks are 0; its backward writes the
    gradient at ``x`` into the block's rows (:class:`_BlockGrads`)."""

    @staticmethod
    def forward(ctx, x, sink, name):  # type: ignore[override]
        ctx.sink, ctx.name = sink, name
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        acc = torch.promote_types(g.dtype, torch.float32)
        ctx.sink.rows(ctx, 1, g.numel(), acc, g.device).copy_(g.reshape(1, -1))
        return g, None, None


class _BlockSink(torch.autograd.Function):
    """Identity on the block's residual input ``r``; every destination of the block
    depends on it, so its backward runs after theirs and computes their mask gradients
    from the rows they wrote."""

    @staticmethod
    def forward(ctx, r, sink, delta, *masks):  # type: ignore[override]
        ctx.sink, ctx.delta = sink, delta
        ctx.shapes = [m.shape for m in masks]
        return r.view_as(r)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        sink: _BlockGrads = ctx.sink
        if sink.buf is None:  # no destination of the block got a gradient
            return (g, None, None, *(torch.zeros(s, device=g.device) for s in ctx.shapes))
        buf, delta = sink.buf, ctx.delta
        for name, rows, _ in sink.members:
            if name not in sink.filled:
                buf[sink.offsets[name] : sink.offsets[name] + rows].zero_()
        rows = [(sink.offsets[n], r) for n, r, _ in sink.members if n in sink.projected]
        if sink.input_grads and rows:  # the residual gradient of ln1 and the Q/K/V projection
            lo, hi = min(o for o, _ in rows), max(o + r for o, r in rows)
            assert hi - lo == sum(r for _, r in rows), "projected rows must be contiguous"
            g = g + buf[lo:hi].sum(0).view(g.shape).to(g.dtype)
        n = delta.shape[0]
        flat = delta.reshape(n, -1).to(buf.dtype)
        prod = torch.mm(buf, flat[sink.lo : sink.hi].t())  # [rows, hi - lo]
        grads = []
        for (name, rows, src_hi), shape in zip(sink.members, ctx.shapes):
            off = sink.offsets[name]
            grad = prod[off : off + rows]
            if src_hi > sink.hi:  # the sources after the block's own inputs
                extra = torch.mm(buf[off : off + rows], flat[sink.hi : src_hi].t())
                grad = torch.cat([grad, extra], dim=-1)
            grads.append(grad.reshape(shape))
        sink.release()
        return (g, None, None, *grads)


class PatchableModel(nn.Module):
    """A TransformerLens model with its edge graph. Calling it runs the model unchanged;
    inside ``with model.patch(masks, patch_src_outs):`` every forward pass patches edges.

    Attributes:
        wrapped_model: the TransformerLens model.
        nodes, srcs, dests, edges: the graph, in deterministic order.
        n_edges: ``len(edges)``.
        seq_len: number of token positions when edges are per position, else ``None``.
        out_slice: index applied to the logits ``[batch, seq, vocab]`` to get the output
            that metrics and algorithms use (by default the last position).
        edge_dict: position (``None`` without token positions) -> edges at that position.
        dest_modules / src_modules: hook name -> mask layout / source layout.
        src_hooks / dest_hooks: where each source module's outputs are read and each
            destination module is patched (see :mod:`edgewise.patching.sites`).
        graph_flags: the TransformerLens flags under which every hook the graph names
            (``hook_result``, ``hook_q_input``, ...) fires; independent references that
            read those hooks switch them on (``with model.adapter.flags(**graph_flags)``).
    """

    def __init__(
        self,
        model: nn.Module,
        graph: Graph,
        adapter: HookAdapter,
        out_slice: tuple[slice | int, ...],
        device: torch.device,
        src_hooks: tuple[SrcHook, ...],
        dest_hooks: tuple[DestHook, ...],
    ):
        super().__init__()
        self.src_hooks = src_hooks
        self.dest_hooks = dest_hooks
        self._reuse: dict[str, tuple[torch.Tensor, int | None]] = {}  # see _buffer
        self._workspace: dict = {}
        self.graph_flags = needed_flags(graph, projected=False, heads_from_z=False)
        self.wrapped_model = model
        self.graph = graph
        self.adapter = adapter
        self.out_slice = out_slice
        self._device = torch.device(device)
        self.srcs: tuple[SrcNode, ...] = graph.srcs
        self.dests: tuple[DestNode, ...] = graph.dests
        self.nodes: tuple[Node, ...] = graph.srcs + graph.dests
        self.edges: EdgeList = EdgeList(graph.edges)
        self.n_edges = graph.n_edges
        self.seq_len = graph.seq_len
        self.separate_qkv = graph.separate_qkv
        self.factorized = graph.factorized
        self.dest_modules: dict[str, DestModule] = {m.module_name: m for m in graph.dest_modules}
        self.src_modules: dict[str, SrcModule] = {m.module_name: m for m in graph.src_modules}
        self.edge_dict: dict[int | None, list[Edge]] = {}
        for e in graph.edges:
            self.edge_dict.setdefault(e.seq_idx, []).append(e)
        self._edge_by_name = {(e.name, e.seq_idx): e for e in graph.edges}
        # auto-circuit's in-model masks, read only by edgewise.compat.patch_mode
        self.patch_masks: dict[str, torch.Tensor] = self.new_masks(0.0)
        self.kv_cache: Any = None  # a frozen cache of a shared prompt prefix (set_kv_caches)
        self.kv_prefix_len = 0

    @property
    def device(self) -> torch.device:
        """Where the wrapped model's parameters are (they move with ``pm.to(...)``)."""
        p = next(self.wrapped_model.parameters(), None)
        return self._device if p is None else p.device

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> PatchableModel:
        """``to``, ``cuda``, ``float``, ``double``, ...: the wrapped model as usual, and the
        masks in ``patch_masks`` too; reused buffers are dropped (wrong device or dtype)."""
        super()._apply(fn, *args, **kwargs)
        with torch.no_grad():
            self.patch_masks = {n: fn(m).detach() for n, m in self.patch_masks.items()}
        self._device = self.device
        self.free_buffers()
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The wrapped model's parameter dtype (activations and masks use it)."""
        return next(self.wrapped_model.parameters()).dtype

    @property
    def score_dtype(self) -> torch.dtype:
        """The dtype of scores: float32, or the model's dtype when that is wider (float64)."""
        return torch.promote_types(self.dtype, torch.float32)

    @property
    def cfg(self) -> Any:
        return self.wrapped_model.cfg

    @property
    def tokenizer(self) -> Any:
        return getattr(self.wrapped_model, "tokenizer", None)

    def forward(self, tokens: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Logits ``[batch, seq, vocab]`` for tokens ``[batch, seq]`` (after the cached
        prefix, if the model has one: see :meth:`set_kv_caches`)."""
        self.check_tokens(tokens)
        if self.kv_cache is not None and "past_kv_cache" not in kwargs:
            kwargs["past_kv_cache"] = self._prefix_cache(tokens.shape[0])
            kwargs.setdefault("attention_mask", torch.ones_like(tokens))
        return self.wrapped_model(tokens, **kwargs)

    def check_tokens(self, tokens: Any, who: str | None = None) -> None:
        """Raise a clear error for prompts this model cannot run (shape checks only, no
        sync): not ``[batch, seq]`` integer ids, a length other than the ``seq_len`` the
        graph was built with (its edges are per position), or longer than the model's
        context ``cfg.n_ctx`` (after a cached prefix)."""
        if not isinstance(tokens, torch.Tensor):
            return  # e.g. a string for TransformerLens to tokenize
        who = f"{who}: " if who else ""
        if tokens.dim() != 2 or tokens.is_floating_point() or tokens.dtype == torch.bool:
            raise TypeError(
                f"{who}prompts must be a [batch, seq] tensor of integer token ids, got "
                f"shape {tuple(tokens.shape)} and dtype {tokens.dtype}"
            )
        n = int(tokens.shape[1])
        if self.seq_len is not None and n != self.seq_len:
            raise ValueError(
                f"{who}this model's graph was built with seq_len={self.seq_len} (one edge per "
                f"token position), but the prompts have {n} tokens. Build it with "
                f"patchable_model(..., seq_len={n}) (e.g. seq_len=dataloader.seq_len), or use "
                f"prompts of {self.seq_len} tokens."
            )
        n_ctx = getattr(self.cfg, "n_ctx", None)
        if isinstance(n_ctx, int) and n + self.kv_prefix_len > n_ctx:
            prefix = f" after a cached prefix of {self.kv_prefix_len}" if self.kv_prefix_len else ""
            raise ValueError(
                f"{who}the prompts have {n} tokens{prefix}, more than the model's context "
                f"(n_ctx={n_ctx}); shorten the prompts or use a model with a longer context."
            )

    def set_kv_caches(self, kv_caches: Any) -> None:
        """Run every forward pass after a frozen TransformerLens key/value cache of a
        prompt prefix shared by every prompt (``load_datasets_from_json(...,
        tail_divergence=True)`` builds them: pass ``(train.kv_cache, test.kv_cache)``).
        The prompts the loaders yield are then the parts after that prefix, and results
        equal those of the full prompts with resample ablation. Any batch size works."""
        caches = [c for c in (kv_caches if isinstance(kv_caches, list | tuple) else [kv_caches])
                  if c is not None]
        if not caches:
            self.kv_cache, self.kv_prefix_len = None, 0
            return
        lengths = {int(c.previous_attention_mask.shape[1]) for c in caches}
        if len(lengths) != 1:
            raise ValueError(f"the caches hold prefixes of different lengths {sorted(lengths)}")
        first = caches[0]
        for c in caches[1:]:  # one shared prefix: every row of every cache is the same
            same = all(torch.equal(a.past_keys[:1], b.past_keys[:1]) for a, b in zip(c.entries, first.entries))
            if not same:
                raise ValueError("the caches hold different prefixes; edgewise needs one shared prefix")
        if not getattr(first, "frozen", False):
            raise ValueError("the key/value cache must be frozen (cache.freeze()), or it grows every pass")
        self.kv_cache, self.kv_prefix_len = first, lengths.pop()

    def _prefix_cache(self, batch: int) -> Any:
        """The prefix cache with ``batch`` rows (views of its first row)."""
        import dataclasses

        c = self.kv_cache
        if c.previous_attention_mask.shape[0] == batch:
            return c

        def rows(t: torch.Tensor) -> torch.Tensor:
            return t[:1].expand(batch, *t.shape[1:])

        entries = [dataclasses.replace(e, past_keys=rows(e.past_keys), past_values=rows(e.past_values))
                   for e in c.entries]
        return dataclasses.replace(c, entries=entries, previous_attention_mask=rows(c.previous_attention_mask))

    def edge(self, name: str, seq_idx: int | None = None) -> Edge:
        """The edge called ``name`` (e.g. ``"A0.1->A1.2.Q"``) at position ``seq_idx``."""
        try:
            return self._edge_by_name[(name, seq_idx)]
        except KeyError:
            raise KeyError(f"no edge {name!r} at seq_idx={seq_idx} in this graph") from None

    # ------------------------------------------------------------------ masks
    def new_masks(
        self, value: float = 0.0, requires_grad: bool = False, dtype: torch.dtype = torch.float32
    ) -> dict[str, torch.Tensor]:
        """A fresh mask per destination module, filled with ``value``."""
        return {
            name: torch.full(m.mask_shape, value, dtype=dtype, device=self.device).requires_grad_(
                requires_grad
            )
            for name, m in self.dest_modules.items()
        }

    def new_prune_scores(self, init_val: float = 0.0) -> PruneScores:
        """Scores shaped like the masks, filled with ``init_val`` (float32)."""
        return self.new_masks(init_val)

    def circuit_prune_scores(
        self,
        edges: Collection[Edge | str] | None = None,
        edge_dict: Mapping[Edge, float] | Mapping[str, float] | None = None,
        bool: bool = False,  # noqa: A002 - auto-circuit's keyword
    ) -> PruneScores:
        """Scores of 1 on ``edges`` (``Edge`` s or names) or ``edge_dict``'s values on its
        edges, 0 elsewhere; booleans with ``bool``. (auto-circuit's; names as keys of
        ``edge_dict`` work here, where auto-circuit raises a ``KeyError``.)"""
        if edges is None and edge_dict is None:
            raise ValueError("give edges or edge_dict")
        scores = self.new_prune_scores()
        for e in self.edges:
            if edges is not None and (e in edges or e.name in edges):
                scores[e.dest.module_name][e.patch_idx] = 1.0
            if edge_dict is not None:
                value = edge_dict.get(e, edge_dict.get(e.name))  # type: ignore[call-overload]
                if value is not None:
                    scores[e.dest.module_name][e.patch_idx] = float(value)
        return {n: s.bool() for n, s in scores.items()} if bool else scores

    def current_patch_masks_as_prune_scores(self) -> PruneScores:
        """``patch_masks`` themselves (shared storage, as in auto-circuit)."""
        return dict(self.patch_masks)

    def masks_from_edges(
        self, edges: set[Edge] | list[Edge], value: float = 1.0, rest: float = 0.0
    ) -> dict[str, torch.Tensor]:
        """Masks with ``value`` on ``edges`` and ``rest`` everywhere else."""
        masks = self.new_masks(rest)
        for e in edges:
            masks[e.dest.module_name][e.patch_idx] = value
        return masks

    # ------------------------------------------------------------------ sources
    def src_outs(
        self, tokens: torch.Tensor, src_block: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Every source's output on ``tokens``: ``[n_srcs, batch, seq, d_model]`` (with
        ``src_block=(lo, hi)``, sources ``lo..hi-1`` only: ``[hi - lo, ...]``). The forward
        pass stops after the last source needed (the unembedding never runs). Calls reuse
        one buffer while the caller holds no earlier result (see :meth:`_buffer`)."""
        blo, bhi = self.block_range(src_block)
        hooks = [h for h in self.src_hooks if blo <= h.module.src_lo and h.module.src_hi <= bhi]
        result: list[torch.Tensor] = []
        seen: set[int] = set()
        handles = []

        def make_hook(h: SrcHook):
            def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
                if not result:  # the first source: [n_srcs, batch, seq, d_model]
                    shape = (bhi - blo, out.shape[0], out.shape[1], int(self.cfg.d_model))
                    result.append(self._buffer("src_outs", shape, out.dtype, out.device))
                lo = h.module.src_lo - blo
                h.outputs(out, into=result[0][lo : h.module.src_hi - blo])
                seen.add(lo)
                if len(seen) == len(hooks):
                    raise _SourcesDone  # the rest of the model is not needed

            return hook

        try:
            for h in hooks:
                handles.append(self.adapter.hook_dict[h.point].register_forward_hook(make_hook(h)))
            with torch.inference_mode():
                self(tokens)
        except _SourcesDone:
            pass
        finally:
            for h in handles:
                h.remove()
        if len(seen) != len(hooks):
            raise RuntimeError("some source hooks did not fire in the forward pass")
        # a view: the caller holding it counts as a user of the buffer (see _buffer)
        return result[0].view(result[0].shape)

    def src_blocks(self, max_srcs: int) -> list[tuple[int, int]]:
        """Consecutive source ranges ``(lo, hi)`` of at most ``max_srcs`` sources (at least
        one whole source module each), on source-module boundaries: the blocks that
        :meth:`patch` and :meth:`src_outs` take as ``src_block``."""
        blocks: list[tuple[int, int]] = []
        for m in self.graph.src_modules:
            lo, hi = m.src_lo, m.src_hi
            if blocks and hi - blocks[-1][0] <= max_srcs:
                blocks[-1] = (blocks[-1][0], hi)
            else:
                blocks.append((lo, hi))
        return blocks

    def block_range(self, src_block: tuple[int, int] | None) -> tuple[int, int]:
        """``src_block`` as ``(lo, hi)``: all sources when None; else checked to be a range
        of whole source modules."""
        if src_block is None:
            return 0, len(self.srcs)
        lo, hi = src_block
        bounds = {m.src_lo for m in self.graph.src_modules} | {len(self.srcs)}
        if not (0 <= lo < hi <= len(self.srcs)) or lo not in bounds or hi not in bounds:
            raise ValueError(
                f"src_block {src_block} must be a range of whole source modules within "
                f"0..{len(self.srcs)}: take one from model.src_blocks(max_srcs)"
            )
        return lo, hi

    def output_at(self, hook: str, tokens: torch.Tensor) -> torch.Tensor:
        """The output of hook ``hook`` on ``tokens`` (detached); the forward pass stops
        there. Inside :meth:`patch`, the patched output."""
        seen: list[torch.Tensor] = []

        def keep(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            seen.append(out.detach())
            raise _SourcesDone

        handle = self.adapter.hook_point(hook).register_forward_hook(keep)
        try:
            with torch.no_grad():
                self(tokens)
        except _SourcesDone:
            pass
        finally:
            handle.remove()
        if not seen:
            raise RuntimeError(f"hook {hook} did not fire in the forward pass")
        return seen[0]

    def free_buffers(self) -> None:
        """Release the buffers kept for reuse between passes: the ``patch - current``
        buffer and the ``src_outs`` buffer (``[n_srcs, batch, seq, d_model]``) and the
        backward pass's gradient rows (reusing them saves a page fault per 4 KiB per pass
        on a CPU)."""
        self._reuse = {}
        self._workspace = {}

    def _buffer(
        self, role: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """A ``[n_srcs, batch, seq, d_model]`` buffer for ``role`` (the ``patch - current``
        differences of a forward pass, the outputs of :meth:`src_outs`). A fresh buffer
        this size costs a page fault per 4 KiB on every pass on a CPU, so calls reuse one
        while nothing else holds it: not the caller, nor the autograd graph of a pass
        with gradients (which holds views of its buffer until its backward is done)."""
        buf, refs = self._reuse.get(role, (None, None))
        if (
            buf is not None
            and (buf.shape, buf.dtype, buf.device) == (shape, dtype, device)
            and refs is not None  # None: this torch does not tell who holds it
            and _storage_refs(buf) == refs
        ):
            return buf
        del buf  # the cache's reference goes before the new buffer comes
        self._reuse.pop(role, None)
        with torch.inference_mode(False):  # a normal tensor: passes of either kind reuse it
            new = torch.empty(shape, dtype=dtype, device=device)
        self._reuse[role] = (new, _storage_refs(new))
        return new

    # ------------------------------------------------------------------ patching
    @contextmanager
    def patch(
        self,
        masks: Mapping[str, torch.Tensor],
        patch_src_outs: torch.Tensor,
        fixed_delta: torch.Tensor | None = None,
        param_grads: bool = True,
        src_block: tuple[int, int] | None = None,
    ) -> Iterator[PatchableModel]:
        """Within this context every forward pass patches edges by ``masks`` with
        ``patch_src_outs`` (``[n_srcs, batch | 1, seq | 1, d_model]``).

        Masks may carry a leading dim of ``c`` circuits (``[c, *mask_shape]``): the input
        must then be the prompts repeated ``c`` times (``tokens.repeat(c, 1)``), and copy
        ``i`` of the batch is patched by circuit ``i``. ``patch_src_outs`` then holds the
        patches of one copy (shared by all), or of the whole batch (one per row: with
        ``c`` equal to the batch, every prompt gets a mask and patch of its own).

        ``fixed_delta`` (``[n_srcs, batch, seq, d_model]``, masks all 0 only) replaces the
        ``patch - current`` differences of the run: the forward pass is the unpatched one
        and each mask's gradient is ``sum grad_input_d . fixed_delta_s`` (EAP-IG on inputs
        runs interpolated inputs against the clean run's differences).

        ``param_grads=False``: backward passes are for the masks (and activations) only;
        the model's parameters get no gradients. At mask 0 the backward through each
        block's ``ln1`` and Q/K/V projection is then replaced by the sum of the mask
        gradients' own rows (the same values, one pass less over the weights).

        ``src_block=(lo, hi)`` (every mask 0; ``lo``/``hi`` on source-module boundaries,
        see :meth:`src_blocks`): only sources ``lo..hi-1`` are tracked, so the pass keeps
        ``[hi - lo, batch, seq, d_model]`` differences instead of ``n_srcs``; only their
        edges' masks get gradients (the others get 0). ``patch_src_outs`` and
        ``fixed_delta`` may then hold just those sources (``src_outs(tokens, src_block)``).

        The hooks are removed on exit, also after an exception."""
        missing = set(self.dest_modules) - set(masks)
        if missing:
            raise ValueError(f"masks lack destination modules: {sorted(missing)[:4]}")
        first = next(iter(self.dest_modules.values()))
        stacked = masks[first.module_name].ndim == len(first.mask_shape) + 1
        copies = masks[first.module_name].shape[0] if stacked else 1
        for name, m in self.dest_modules.items():
            want = ((copies,) if stacked else ()) + m.mask_shape
            if tuple(masks[name].shape) != want:
                raise ValueError(
                    f"mask for {name} has shape {tuple(masks[name].shape)}, expected {want}"
                )
        run = _Run()
        first_src = self.src_hooks[0]
        nonzero = {name: bool(m.any()) for name, m in masks.items()}
        track_current = any(nonzero.values())
        n_srcs = len(self.srcs)
        blo, bhi = self.block_range(src_block)
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
        # Each destination module's sources within the block, and its masks' columns there
        span = {
            name: (max(m.src_lo, blo), min(m.src_hi, bhi)) for name, m in self.dest_modules.items()
        }
        if src_block is not None:
            masks = {
                name: masks[name][..., lo - self.dest_modules[name].src_lo : hi - self.dest_modules[name].src_lo]
                for name, (lo, hi) in span.items()
            }  # fmt: skip
        masks_c = {name: m if stacked else m[None] for name, m in masks.items()}
        # Destinations of one block patched by one product over delta: its projected Q/K/V
        # (same sources), and the part of its other inputs (MLP, end) from those sources.
        # (resid hook, src_lo, src_hi) -> (projected names, input names); nonzero masks only
        fused: dict[tuple[str, int, int], tuple[list[str], list[str]]] = {}
        for dh in self.dest_hooks:
            if dh.projected and nonzero[dh.module.module_name]:
                key = (dh.resid, dh.module.src_lo, dh.module.src_hi)
                fused.setdefault(key, ([], []))[0].append(dh.module.module_name)
        group_of: dict[str, tuple[str, int, int]] = {}
        for key, (proj, inputs) in fused.items():
            block = self.dest_modules[proj[0]].block
            group_of.update(dict.fromkeys(proj, key))
            for dh in self.dest_hooks:
                m = dh.module
                if (
                    not dh.projected
                    and nonzero[m.module_name]
                    and m.block == block
                    and m.src_lo == key[1]
                    and m.src_hi >= key[2]
                ):
                    inputs.append(m.module_name)
                    group_of[m.module_name] = key
        # Mask gradients at 0 gathered per block (see _BlockGrads): resid hook -> members
        # (name, rows, src_hi), the block's source range, and the masks
        zero_groups: dict[str, tuple[list[tuple[str, int, int]], int, int]] = {}
        zero_member: dict[str, str] = {}
        if not stacked and self.seq_len is None:
            for dh in self.dest_hooks:
                m = dh.module
                if (
                    dh.projected
                    and not nonzero[m.module_name]
                    and masks[m.module_name].requires_grad
                ):
                    m_lo, m_hi = span[m.module_name]
                    if m_lo >= m_hi:
                        continue
                    members, lo, hi = zero_groups.setdefault(dh.resid, ([], m_lo, m_hi))  # type: ignore[arg-type]
                    if (lo, hi) == (m_lo, m_hi):
                        members.append((m.module_name, m.n_heads or 1, m_hi))
                        zero_member[m.module_name] = dh.resid  # type: ignore[assignment]
            for dh in self.dest_hooks:
                m = dh.module
                m_lo, m_hi = span[m.module_name]
                for resid, (members, lo, hi) in zero_groups.items():
                    if (
                        not dh.projected
                        and not nonzero[m.module_name]
                        and masks[m.module_name].requires_grad
                        and m.block == self.dest_modules[members[0][0]].block
                        and m_lo == lo
                        and m_hi >= hi
                    ):
                        members.append((m.module_name, 1, m_hi))
                        zero_member[m.module_name] = resid
        projected_names = {dh.module.module_name for dh in self.dest_hooks if dh.projected}
        workspace = self._workspace  # buffers of the hand-written backward passes
        handles = []

        def src_hook(h: SrcHook):
            mod = h.module
            lo, hi = mod.src_lo, mod.src_hi
            tracked = blo <= lo and hi <= bhi
            lo, hi = lo - blo, hi - blo  # rows of this pass's buffer

            def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
                if h is first_src:  # a new forward pass starts
                    b, s, d = out.shape[0], out.shape[1], int(self.cfg.d_model)
                    if b % copies:
                        raise ValueError(
                            f"masks stack {copies} circuits, so the batch ({b} prompts) must "
                            f"hold {copies} copies of the prompts: use tokens.repeat({copies}, 1)"
                        )
                    if fixed_delta is None:
                        shape = (bhi - blo, b, s, d)
                        run.delta = self._buffer("delta", shape, out.dtype, out.device)
                    else:
                        run.delta = fixed_delta
                    run.current, run.inputs, run.sinks = {}, {}, {}
                assert run.delta is not None
                if fixed_delta is not None or not tracked:
                    return
                rows = run.delta[lo:hi]  # [n, c*b, s, d], contiguous
                # Current outputs are kept for the gradient only where some mask is nonzero
                # (at mask 0 their gradient through the patch is 0).
                outs = h.outputs(out) if torch.is_grad_enabled() and track_current else None
                with torch.no_grad():
                    if outs is None:
                        h.outputs(out, into=rows)
                        cur = rows
                    else:
                        cur = outs
                    patch = patch_src_outs[lo:hi]
                    # one patch per prompt of the stacked batch, or one shared by the copies
                    per_copy = copies > 1 and patch.shape[1] == rows.shape[1]
                    torch.sub(
                        patch.unflatten(1, (copies, -1)) if per_copy else patch[:, None],
                        cur.unflatten(1, (copies, -1)),
                        out=rows.unflatten(1, (copies, -1)),
                    )
                if outs is not None and outs.requires_grad:
                    run.current[lo] = outs

            return hook

        pos = "" if self.seq_len is None else "p"
        eq_heads = f"c{pos}hn,ncbpd->hcbpd"  # patched inputs heads first

        def src_args(lo: int, hi: int) -> tuple:
            """``(groups, *current)`` for ``_PatchAdd`` over sources ``[lo, hi)``."""
            groups = [
                (s.src_lo - lo, s.n_heads or 1)
                for s in self.graph.src_modules
                if lo <= s.src_lo < hi
            ]
            # a source whose output needs no gradient (frozen weights upstream, e.g. the
            # embeddings) is left out; every other source still gets -mask * grad
            kept = [(g, run.current.get(lo + g[0])) for g in groups]
            kept = [(g, c) for g, c in kept if c is not None]
            return ([g for g, _ in kept], *(c for _, c in kept))

        def run_group(key: tuple[str, int, int]) -> None:
            """The patched per-head inputs ``[h, c*b, p, d]`` of the group's projected
            destinations, and the group's sources' part of its other inputs."""
            proj, inputs = fused[key]
            name, lo, hi = key
            r = run.resid[name]
            parts = [masks_c[n] for n in proj]
            parts += [masks_c[n][..., : hi - lo].unsqueeze(-2) for n in inputs]
            z = _PatchAdd.apply(r, torch.cat(parts, dim=-2), run.delta[lo:hi], eq_heads,
                                *src_args(lo, hi))  # fmt: skip
            sizes = [self.dest_modules[n].n_heads or 1 for n in proj] + [1] * len(inputs)
            outs = z.split(sizes)
            run.inputs.update(zip(proj, outs))
            run.inputs.update((n, o[0] - r) for n, o in zip(inputs, outs[len(proj) :]))

        def dest_hook(dh: DestHook, mask: torch.Tensor):
            mod = dh.module
            name = mod.module_name
            lo, hi = span[name]
            lo, hi = lo - blo, hi - blo  # rows of this pass's buffer
            head = "" if mod.n_heads is None else "h"
            eq = f"c{pos}{head}n,ncbpd->cbp{head}d"
            # the mask gradient of a projected destination at mask 0 (see _ProjectedMaskGrad)
            eq_grad = None if (not pos and not stacked) else f"hcbpd,ncbpd->c{pos}hn"
            mask = mask if stacked else mask[None]

            def hook(_m: nn.Module, _i: Any, x: torch.Tensor) -> torch.Tensor:
                assert run.delta is not None
                if hi <= lo:  # no source of this destination in the block
                    return x
                key = group_of.get(name)
                if key is not None and name not in run.inputs:
                    run_group(key)
                sink = run.sinks.get(zero_member.get(name, ""))
                if not dh.projected:
                    if key is None and sink is not None:
                        return _StashGrad.apply(x, sink, name)
                    if key is None:
                        return _PatchAdd.apply(x, mask, run.delta[lo:hi], eq, *src_args(lo, hi))
                    # the group's part, then the sources after the group's
                    x = x + run.inputs.pop(name)
                    g_hi = key[2]
                    if g_hi == hi:
                        return x
                    rest = mask[..., g_hi - lo :]
                    return _PatchAdd.apply(x, rest, run.delta[g_hi:hi], eq, *src_args(g_hi, hi))
                if key is None:  # all masks 0
                    if torch.is_grad_enabled() and mask.requires_grad:
                        r = run.resid[dh.resid]  # type: ignore[index]
                        w = dh.weight().detach()
                        return _ProjectedMaskGrad.apply(
                            x, mask, run.delta[lo:hi], r.detach(), w, eq_grad, dh.norm,
                            workspace, sink, name, dh.shift().detach(),
                        )  # fmt: skip
                    return x
                return dh.project(x, run.inputs.pop(name))

            return hook

        def resid_hook(name: str):
            def hook(_m: nn.Module, _i: Any, r: torch.Tensor) -> torch.Tensor | None:
                run.resid[name] = r
                if name not in zero_groups or not torch.is_grad_enabled():
                    return None
                members, lo, hi = zero_groups[name]
                rel = [(n, rows, src_hi - blo) for n, rows, src_hi in members]  # buffer rows
                sink = run.sinks[name] = _BlockGrads(
                    rel, lo - blo, hi - blo, workspace, projected_names, input_grads=not param_grads
                )
                return _BlockSink.apply(r, sink, run.delta, *(masks[n] for n, _, _ in members))

            return hook

        try:
            for h in self.src_hooks:
                handles.append(self.adapter.hook_dict[h.point].register_forward_hook(src_hook(h)))
            for name in sorted({dh.resid for dh in self.dest_hooks if dh.resid}):
                handles.append(self.adapter.hook_dict[name].register_forward_hook(resid_hook(name)))
            for dh in self.dest_hooks:
                hook = dest_hook(dh, masks[dh.module.module_name])
                handles.append(self.adapter.hook_dict[dh.point].register_forward_hook(hook))
            yield self
        finally:
            for h in handles:
                h.remove()
            run.delta, run.current, run.resid, run.inputs, run.sinks = None, {}, {}, {}, {}

    def run_patched(
        self, tokens: torch.Tensor, masks: Mapping[str, torch.Tensor], patch_src_outs: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[batch, seq, vocab]`` with edges patched by ``masks``."""
        with self.patch(masks, patch_src_outs):
            return self(tokens)


def _out_slice(slice_output: SliceOutput) -> tuple[slice | int, ...]:
    if slice_output in ("last_seq", True):
        return (slice(None), -1)
    if slice_output == "not_first_seq":
        return (slice(None), slice(1, None))
    if slice_output in (None, False):
        return (slice(None),)
    raise ValueError(
        f"slice_output must be 'last_seq', 'not_first_seq' or None, got {slice_output!r}"
    )


def patchable_model(
    model: nn.Module,
    factorized: bool = True,
    slice_output: SliceOutput = "last_seq",
    seq_len: int | None = None,
    separate_qkv: bool = True,
    device: torch.device | str | None = None,
    kv_caches: Any = None,
) -> PatchableModel:
    """Wrap a TransformerLens ``HookedTransformer`` or ``TransformerBridge`` for edge patching.

    Builds the graph, chooses where each source is read and each destination patched
    (:mod:`edgewise.patching.sites`: head outputs from ``hook_z``; on ``HookedTransformer``
    Q/K/V patched after the projection, so no per-head copies of the residual stream),
    switches on the TransformerLens hook flags those hooks need (``use_hook_mlp_in``, and
    ``use_split_qkv_input`` / ``use_attn_in`` / ``use_attn_result`` only where the fast
    hooks do not apply) on ``model`` itself, and checks with short forward passes that
    every hook fires with the expected shape and that the fast hooks patch exactly like
    TransformerLens' own per-head hooks (falling back to those, with a warning, if not).

    Args:
        model: the model; left unchanged apart from those flags.
        factorized: factorized graph (every source to every later destination) or the
            residual graph (one edge per component).
        slice_output: which output positions metrics use: ``"last_seq"`` (``[:, -1]``),
            ``"not_first_seq"`` (``[:, 1:]``) or ``None`` (all).
        seq_len: if given, every edge exists per token position; inputs must then have
            exactly ``seq_len`` tokens.
        separate_qkv: separate Q, K and V destinations per head.
        device: where masks live (default: the model's device). The model is moved there.
        kv_caches: frozen key/value caches of the prompts' shared prefix, as
            ``load_datasets_from_json(..., tail_divergence=True)`` builds them (e.g.
            ``(train.kv_cache, test.kv_cache)``, as in auto-circuit); see
            :meth:`PatchableModel.set_kv_caches`.
    """
    adapter = HookAdapter(model)
    adapter.check_patchable()
    if device is None:
        try:
            device = next(model.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
    device = require_device(device)  # before moving anything: a failed move breaks the model
    if seq_len is not None:
        seq_len = require_int(seq_len, "seq_len", 1)
        n_ctx = getattr(adapter.cfg, "n_ctx", None)
        if isinstance(n_ctx, int) and seq_len > n_ctx:
            raise ValueError(f"seq_len={seq_len} is longer than the model's context (n_ctx={n_ctx})")
    if any(p.device != device for p in model.parameters()):
        model.to(device)
    spec = GraphSpec.from_config(adapter.cfg)
    if factorized and not separate_qkv and spec.n_kv_heads != spec.n_heads:
        raise ValueError(
            "separate_qkv=False gives one input per head, but with grouped-query attention "
            "keys and values are shared between heads: use separate_qkv=True"
        )
    graph = build_graph(spec, factorized=factorized, separate_qkv=separate_qkv, seq_len=seq_len)
    out_slice = _out_slice(slice_output)
    from_z = z_hooks_available(model, adapter, graph)
    projected = projected_dests_available(model, adapter, graph)
    pm = _build(model, adapter, graph, out_slice, device, from_z, projected)
    if (from_z or projected) and not _agrees_with_graph_hooks(pm):
        warnings.warn(
            f"{type(model).__name__}: computing head outputs from hook_z or patching Q/K/V "
            "after the projection does not reproduce TransformerLens' own per-head hooks on "
            "this model; using those instead (slower).",
            stacklevel=2,
        )
        pm = _build(model, adapter, graph, out_slice, device, False, False)
    if kv_caches is not None:
        pm.set_kv_caches(kv_caches)
    return pm


def _build(
    model: nn.Module,
    adapter: HookAdapter,
    graph: Graph,
    out_slice: tuple[slice | int, ...],
    device: torch.device,
    from_z: bool,
    projected: bool,
) -> PatchableModel:
    """Switch on the flags the chosen hooks need, check that every hook fires with the
    expected number of heads, and wrap the model."""
    flags = needed_flags(graph, projected, from_z)
    # use_split_qkv_input and use_attn_in exclude each other (TransformerLens 4.x)
    if "use_split_qkv_input" in flags:
        adapter.disable_flag("use_attn_in")
    if "use_attn_in" in flags:
        adapter.disable_flag("use_split_qkv_input")
    adapter.enable_flags(flags)
    srcs = src_hooks(model, adapter, graph, from_z)
    dests = dest_hooks(model, adapter, graph, projected)
    points = [h.point for h in srcs] + [h.point for h in dests]
    points += sorted({h.resid for h in dests if h.resid})
    adapter.check_hooks(points)
    shapes = adapter.probe(points, device)
    for h in dests:
        want, shape = h.module.n_heads, shapes[h.point]
        got = shape[2] if len(shape) == 4 else None
        if want != got:
            raise ValueError(
                f"hook {h.point} has shape {shape}; the graph expects {want} heads there. "
                "Is the model's config (n_heads, n_key_value_heads) right?"
            )
    return PatchableModel(model, graph, adapter, out_slice, device, srcs, dests)


def _agrees_with_graph_hooks(pm: PatchableModel) -> bool:
    """Check once, on random tokens and masks, that ``pm``'s hooks patch exactly like
    TransformerLens' own per-head hooks (``hook_result``, ``hook_q_input``, ...)."""
    model, adapter, graph = pm.wrapped_model, pm.adapter, pm.graph
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(int(pm.cfg.d_vocab), (2, pm.seq_len or 3), generator=gen).to(pm.device)
    masks = {
        name: (torch.rand(m.mask_shape, generator=gen) < 0.5).float().to(pm.device)
        for name, m in pm.dest_modules.items()
    }
    with torch.inference_mode():
        fast = pm.run_patched(tokens[:1], masks, pm.src_outs(tokens[1:]))
        with adapter.flags(**pm.graph_flags):
            ref = PatchableModel(
                model,
                graph,
                adapter,
                pm.out_slice,
                pm.device,
                src_hooks(model, adapter, graph, from_z=False),
                dest_hooks(model, adapter, graph, projected=False),
            )
            want = ref.run_patched(tokens[:1], masks, ref.src_outs(tokens[1:]))
    if not want.dtype.is_floating_point or fast.shape != want.shape:
        return fast.shape == want.shape and bool((fast == want).all())
    # a model that overflows (float16) is compared where it is finite; NaN and inf must
    # sit at the same places (scoring then names the first source that overflows)
    finite = torch.isfinite(want)
    if not torch.equal(finite, torch.isfinite(fast)):
        return False
    scale = float(want[finite].abs().max()) if bool(finite.any()) else 0.0
    tol = math.sqrt(torch.finfo(want.dtype).eps) * (1.0 + scale)
    return torch.allclose(fast.double(), want.double(), rtol=0.0, atol=tol, equal_nan=True)
