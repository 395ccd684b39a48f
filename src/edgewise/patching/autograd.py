"""The autograd functions of a patched pass: the patch equation with hand-written
gradients (:class:`PatchAdd`), and the mask gradients at mask 0 computed without building
per-head inputs (:class:`ProjectedMaskGrad`) or gathered per block into one product over
the patch differences (:class:`BlockGrads`, :class:`StashGrad`, :class:`BlockSink`).

Each takes the run's ``patch - current`` differences ``delta`` ``[n, c*b, p, d]`` (``n``
sources, ``c`` stacked copies of the batch) and a mask ``[c, (p,) (h,) n]``.
"""

from __future__ import annotations

from typing import Any

import torch

from edgewise.patching.buffers import BufferCache
from edgewise.patching.sites import Norm


class PatchAdd(torch.autograd.Function):
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


class ProjectedMaskGrad(torch.autograd.Function):
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
    def forward(ctx, x, mask, delta, r, w, eq, norm, buffers, sink, name, shift):  # type: ignore[override]
        ctx.eq, ctx.norm, ctx.buffers, ctx.sink, ctx.name = eq, norm, buffers, sink, name
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
        # [h, b*p, d]: rows of the block's gradient matrix (see BlockSink), or a scratch
        # buffer from the cache (a fresh one this size costs page faults on a CPU)
        sink: BlockGrads | None = ctx.sink
        flat = None
        if sink is not None:
            v = sink.rows(ctx, h, t * d, acc, gs.device).view(h, t, d)
        else:
            flat = ctx.buffers.take("projected grad", h * t * d, acc, gs.device)
            v = flat[: h * t * d].view(h, t, d)
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
        ctx.buffers.give_back("projected grad", flat)
        return grad_x, grad, None, None, None, None, None, None, None, None, None


class BlockGrads:
    """The mask gradients of one block's destinations at mask 0, gathered so that one
    product reads the patch buffer once for all of them (one copy, no token positions).

    Each destination's backward writes its rows of ``G`` (``[rows, b*p*d]``: the gradient
    at its input, per head), and :class:`BlockSink`, which every one of them depends on,
    computes ``G @ delta[lo:hi]^T`` and hands each mask its gradient. Destinations that
    read more sources (an MLP reads the block's heads too) get those columns separately.

    With ``input_grads``, the rows of the projected (Q/K/V) destinations also stand in for
    the model's own backward through ``ln1`` and the Q/K/V projection: their sum is exactly
    the gradient that path gives the residual stream (``sum_h J_N^T (dL/dX_h W_h^T)``), so
    those destinations pass no gradient to it and the sink adds the sum instead. The
    projection's weights then get no gradient.
    """

    def __init__(self, members: list[tuple[str, int, int]], lo: int, hi: int,
                 buffers: BufferCache, projected: set[str], input_grads: bool) -> None:  # fmt: skip
        self.members = members  # (name, n rows, src_hi)
        self.lo, self.hi, self.buffers = lo, hi, buffers
        self.projected, self.input_grads = projected, input_grads
        self.offsets: dict[str, int] = {}
        n = 0
        for name, rows, _ in members:
            self.offsets[name] = n
            n += rows
        self.n_rows = n
        self.flat: torch.Tensor | None = None  # taken from ``buffers`` until release()
        self.buf: torch.Tensor | None = None
        self.filled: set[str] = set()

    def rows(self, ctx: Any, n_rows: int, k: int, dtype: torch.dtype, device: Any) -> torch.Tensor:
        if self.buf is None:  # taken at the first row; blocks finish in turn, so one suffices
            size = self.n_rows * k
            self.flat = self.buffers.take("block grads", size, dtype, device)
            self.buf = self.flat[:size].view(self.n_rows, k)
        self.filled.add(ctx.name)
        lo = self.offsets[ctx.name]
        return self.buf[lo : lo + n_rows]

    def release(self) -> None:
        """Give the rows back to the cache (after BlockSink's backward has used them)."""
        if self.flat is not None:
            self.buffers.give_back("block grads", self.flat)
        self.flat, self.buf, self.filled = None, None, set()


class StashGrad(torch.autograd.Function):
    """Identity on an input destination ``x`` whose masks are 0; its backward writes the
    gradient at ``x`` into the block's rows (:class:`BlockGrads`)."""

    @staticmethod
    def forward(ctx, x, sink, name):  # type: ignore[override]
        ctx.sink, ctx.name = sink, name
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        acc = torch.promote_types(g.dtype, torch.float32)
        ctx.sink.rows(ctx, 1, g.numel(), acc, g.device).copy_(g.reshape(1, -1))
        return g, None, None


class BlockSink(torch.autograd.Function):
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
        sink: BlockGrads = ctx.sink
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
