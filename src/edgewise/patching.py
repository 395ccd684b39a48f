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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from edgewise.adapter import HookAdapter
from edgewise.graph import DestModule, Graph, GraphSpec, SrcModule, build_graph
from edgewise.types import DestNode, Edge, Node, SrcNode

SliceOutput = Literal["last_seq", "not_first_seq"] | bool | None


@dataclass
class _Run:
    """State of one patched forward pass: the ``patch - current`` difference of every
    source computed so far, ``[n_srcs, batch, seq, d_model]``, and (when gradients are
    on) the current source outputs, so gradients flow back to them."""

    delta: torch.Tensor | None = None
    current: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class SrcHook:
    """Where the outputs of one source module are read: the hook ``point`` that fires
    with them, and ``outputs`` mapping that hook's output to the sources' outputs
    ``[n, batch, seq, d_model]`` (``n`` heads, or 1).

    Head outputs are computed from ``attn.hook_z`` as ``z_h @ W_O[h]`` (one batched
    matmul) when the model exposes both; TransformerLens' own ``use_attn_result`` is the
    fallback, as it materialises a ``[batch, seq, heads, d_head, d_model]`` intermediate
    that makes a forward pass several times slower on a CPU."""

    module: SrcModule
    point: str
    outputs: Callable[[torch.Tensor], torch.Tensor]


def _heads_from_z(attn: nn.Module, n_heads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def outputs(z: torch.Tensor) -> torch.Tensor:
        if z.ndim == 3:  # bridges give [batch, seq, heads * d_head]
            z = z.unflatten(-1, (n_heads, -1))
        b, p, h, d_head = z.shape
        # one [b*p, d_head] @ [d_head, d_model] product per head (no broadcast copy of W_O)
        z = z.permute(2, 0, 1, 3).reshape(h, b * p, d_head)
        return torch.bmm(z, attn.W_O).view(h, b, p, -1)

    return outputs


def _heads_first(out: torch.Tensor) -> torch.Tensor:
    return out.permute(2, 0, 1, 3)


def _one_src(out: torch.Tensor) -> torch.Tensor:
    return out[None]


def _z_hooks_available(model: nn.Module, adapter: HookAdapter, graph: Graph) -> bool:
    """Whether every attention block has ``hook_z`` and a dense ``W_O [heads, d_head, d]``."""
    if getattr(adapter.cfg, "load_in_4bit", False):
        return False
    for mod in graph.src_modules:
        if mod.n_heads is None:
            continue
        b = int(mod.module_name.split(".")[1])
        try:
            w_o = model.blocks[b].attn.W_O
        except (AttributeError, IndexError, TypeError, NotImplementedError):
            return False
        if adapter.resolve(f"blocks.{b}.attn.hook_z") is None or not isinstance(w_o, torch.Tensor):
            return False
        if w_o.ndim != 3 or w_o.shape[0] != mod.n_heads:
            return False
    return True


def _src_hooks(
    model: nn.Module, adapter: HookAdapter, graph: Graph, from_z: bool
) -> tuple[SrcHook, ...]:
    hooks = []
    for mod in graph.src_modules:
        if mod.n_heads is None:
            hooks.append(
                SrcHook(mod, adapter.resolve(mod.module_name) or mod.module_name, _one_src)
            )
        elif from_z:
            b = int(mod.module_name.split(".")[1])
            point = adapter.resolve(f"blocks.{b}.attn.hook_z")
            hooks.append(SrcHook(mod, point, _heads_from_z(model.blocks[b].attn, mod.n_heads)))
        else:
            hooks.append(
                SrcHook(mod, adapter.resolve(mod.module_name) or mod.module_name, _heads_first)
            )
    return tuple(hooks)


class _PatchAdd(torch.autograd.Function):
    """``x + einsum(mask, delta[lo:hi])`` with hand-written gradients.

    Masks carry a leading "copies" dim ``c``: the batch holds ``c`` copies of the
    prompts, copy ``i`` patched by ``mask[i]`` (so many circuits run in one pass).
    ``x`` is ``[c*b, p, (h,) d]``, ``delta`` ``[n, c*b, p, d]``.

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
        if not bool(mask.any()):
            ctx.zero = True
            return x.clone()
        ctx.zero = False
        add = torch.einsum(eq, mask.to(x.dtype), ctx.delta)  # [c, b, p, (h,) d], a view
        return (x.view(add.shape) + add).view(x.shape)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        lhs, rhs = ctx.eq.split("->")
        m_sub, d_sub = lhs.split(",")
        copies = mask.shape[0]
        gv = g.view(copies, -1, *g.shape[1:])
        grad_mask = None
        if ctx.needs_input_grad[1]:
            acc = torch.promote_types(g.dtype, torch.float32)  # never below float32
            grad_mask = torch.einsum(f"{rhs},{d_sub}->{m_sub}", gv.to(acc), ctx.delta.to(acc))
        grads_current: list[torch.Tensor | None] = [None] * len(ctx.groups)
        if not ctx.zero:
            m = mask.to(g.dtype)
            for i, (start, count) in enumerate(ctx.groups):
                if not ctx.needs_input_grad[5 + i]:
                    continue
                # -sum over the destination's heads of mask * grad: [n, c, b, p, d]
                grad = -torch.einsum(f"{m_sub},{rhs}->{d_sub}", m[..., start : start + count], gv)
                grads_current[i] = grad.reshape(count, g.shape[0], *grad.shape[3:])
        return (g, grad_mask, None, None, None, *grads_current)


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
        src_hooks: where each source module's outputs are read (see :class:`SrcHook`).
    """

    def __init__(
        self,
        model: nn.Module,
        graph: Graph,
        adapter: HookAdapter,
        out_slice: tuple[slice | int, ...],
        device: torch.device,
        src_hooks: tuple[SrcHook, ...],
    ):
        super().__init__()
        self.src_hooks = src_hooks
        self.wrapped_model = model
        self.graph = graph
        self.adapter = adapter
        self.out_slice = out_slice
        self.device = device
        self.srcs: tuple[SrcNode, ...] = graph.srcs
        self.dests: tuple[DestNode, ...] = graph.dests
        self.nodes: tuple[Node, ...] = graph.srcs + graph.dests
        self.edges: tuple[Edge, ...] = graph.edges
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

    @property
    def cfg(self) -> Any:
        return self.wrapped_model.cfg

    @property
    def tokenizer(self) -> Any:
        return getattr(self.wrapped_model, "tokenizer", None)

    def forward(self, tokens: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Logits ``[batch, seq, vocab]`` for tokens ``[batch, seq]``."""
        return self.wrapped_model(tokens, **kwargs)

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

    def masks_from_edges(
        self, edges: set[Edge] | list[Edge], value: float = 1.0, rest: float = 0.0
    ) -> dict[str, torch.Tensor]:
        """Masks with ``value`` on ``edges`` and ``rest`` everywhere else."""
        masks = self.new_masks(rest)
        for e in edges:
            masks[e.dest.module_name][e.patch_idx] = value
        return masks

    # ------------------------------------------------------------------ sources
    def src_outs(self, tokens: torch.Tensor) -> torch.Tensor:
        """Every source's output on ``tokens``: ``[n_srcs, batch, seq, d_model]``."""
        outs: list[torch.Tensor] = []
        handles = []

        def make_hook(h: SrcHook):
            def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
                outs.append(h.outputs(out))

            return hook

        try:
            for h in self.src_hooks:
                handles.append(self.adapter.hook_dict[h.point].register_forward_hook(make_hook(h)))
            with torch.inference_mode():
                self.wrapped_model(tokens)
        finally:
            for h in handles:
                h.remove()
        return torch.cat(outs)

    # ------------------------------------------------------------------ patching
    @contextmanager
    def patch(
        self, masks: Mapping[str, torch.Tensor], patch_src_outs: torch.Tensor
    ) -> Iterator[PatchableModel]:
        """Within this context every forward pass patches edges by ``masks`` with
        ``patch_src_outs`` (``[n_srcs, batch | 1, seq | 1, d_model]``).

        Masks may carry a leading dim of ``c`` circuits (``[c, *mask_shape]``): the input
        must then be the prompts repeated ``c`` times (``tokens.repeat(c, 1)``), and copy
        ``i`` of the batch is patched by circuit ``i``.

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
        if patch_src_outs.shape[0] != len(self.srcs):
            raise ValueError(
                f"patch_src_outs has {patch_src_outs.shape[0]} sources, the graph has "
                f"{len(self.srcs)}: compute it with model.src_outs or src_ablations"
            )
        run = _Run()
        first_src = self.src_hooks[0]
        handles = []

        def src_hook(h: SrcHook):
            mod = h.module
            lo, hi = mod.src_lo, mod.src_lo + (mod.n_heads or 1)

            def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
                outs = h.outputs(out)  # [n, c*b, s, d]
                if h is first_src:  # a new forward pass starts
                    n, b, s, d = outs.shape
                    if b % copies:
                        raise ValueError(
                            f"masks stack {copies} circuits, so the batch ({b} prompts) must "
                            f"hold {copies} copies of the prompts: use tokens.repeat({copies}, 1)"
                        )
                    run.delta = torch.empty(
                        len(self.srcs), b, s, d, dtype=outs.dtype, device=outs.device
                    )
                    run.current = {}
                assert run.delta is not None
                with torch.no_grad():
                    delta = run.delta[lo:hi].unflatten(1, (copies, -1))
                    torch.sub(
                        patch_src_outs[lo:hi, None], outs.unflatten(1, (copies, -1)), out=delta
                    )
                if torch.is_grad_enabled() and outs.requires_grad:
                    run.current[lo] = outs

            return hook

        def dest_hook(mod: DestModule, mask: torch.Tensor):
            pos = "" if self.seq_len is None else "p"
            head = "" if mod.n_heads is None else "h"
            eq = f"c{pos}{head}n,ncbpd->cbp{head}d"
            mask = mask if stacked else mask[None]
            # the source modules this destination reads, as (offset in mask, count, heads?)
            groups = [
                (s.src_lo - mod.src_lo, s.n_heads or 1)
                for s in self.graph.src_modules
                if mod.src_lo <= s.src_lo < mod.src_hi
            ]

            def hook(_m: nn.Module, _i: Any, x: torch.Tensor) -> torch.Tensor:
                assert run.delta is not None
                delta = run.delta[mod.src_lo : mod.src_hi]
                current = [run.current.get(mod.src_lo + g[0]) for g in groups]
                if all(c is not None for c in current):
                    return _PatchAdd.apply(x, mask, delta, eq, groups, *current)
                return _PatchAdd.apply(x, mask, delta, eq, [], *[])

            return hook

        try:
            for h in self.src_hooks:
                handles.append(self.adapter.hook_dict[h.point].register_forward_hook(src_hook(h)))
            for name, mod in self.dest_modules.items():
                handles.append(
                    self.adapter.hook_point(name).register_forward_hook(dest_hook(mod, masks[name]))
                )
            yield self
        finally:
            for h in handles:
                h.remove()
            run.delta, run.current = None, {}

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
) -> PatchableModel:
    """Wrap a TransformerLens ``HookedTransformer`` or ``TransformerBridge`` for edge patching.

    Switches on the hook flags edges need (``use_split_qkv_input`` or ``use_attn_in``,
    ``use_hook_mlp_in``) on ``model`` itself, checks with a two-token forward pass that
    every hook fires with the expected shape, and builds the graph. Head outputs are
    computed from ``hook_z`` and ``W_O`` (checked once against the model's attention
    output); only a model without them gets ``use_attn_result`` switched on.

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
    """
    adapter = HookAdapter(model)
    if device is None:
        try:
            device = next(model.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
    device = torch.device(device)
    if any(p.device != device for p in model.parameters()):
        model.to(device)
    spec = GraphSpec.from_config(adapter.cfg)
    flags = []
    if factorized:
        # use_split_qkv_input and use_attn_in exclude each other (TransformerLens 4.x)
        adapter.disable_flag("use_attn_in" if separate_qkv else "use_split_qkv_input")
        if not separate_qkv and spec.n_kv_heads != spec.n_heads:
            raise ValueError(
                "separate_qkv=False gives one input per head, but with grouped-query attention "
                "keys and values are shared between heads: use separate_qkv=True"
            )
        flags.append("use_split_qkv_input" if separate_qkv else "use_attn_in")
        if not spec.attn_only:
            flags.append("use_hook_mlp_in")
    graph = build_graph(spec, factorized=factorized, separate_qkv=separate_qkv, seq_len=seq_len)
    from_z = _z_hooks_available(model, adapter, graph)
    if not from_z:
        flags.append("use_attn_result")
    adapter.enable_flags(flags)
    src_hooks = _src_hooks(model, adapter, graph, from_z)
    hooks = [h.point for h in src_hooks] + [m.module_name for m in graph.dest_modules]
    adapter.check_hooks(hooks)
    shapes = adapter.probe(hooks, device)
    for m in graph.dest_modules:
        want = m.n_heads
        got = shapes[m.module_name][2] if len(shapes[m.module_name]) == 4 else None
        if want != got:
            raise ValueError(
                f"hook {m.module_name} has shape {shapes[m.module_name]}; the graph expects "
                f"{want} heads there. Is the model's config (n_heads, n_key_value_heads) right?"
            )
    pm = PatchableModel(model, graph, adapter, _out_slice(slice_output), device, src_hooks)
    if from_z and not _z_matches_attn_out(pm):
        adapter.enable_flags(["use_attn_result"])
        pm.src_hooks = _src_hooks(model, adapter, graph, from_z=False)
        adapter.check_hooks([h.point for h in pm.src_hooks])
        adapter.probe([h.point for h in pm.src_hooks], device)
    return pm


def _z_matches_attn_out(pm: PatchableModel) -> bool:
    """Check once that the head outputs computed from ``hook_z`` sum (with ``b_O``) to the
    attention output the model computes, so a model whose attention differs falls back to
    TransformerLens' own per-head results."""
    a = pm.adapter
    out_hooks = [a.resolve(f"blocks.{b}.hook_attn_out") for b in range(int(pm.cfg.n_layers))]
    if any(h is None for h in out_hooks):
        return True  # nothing to compare with
    heads = {h.module.module_name: h for h in pm.src_hooks if h.module.n_heads}
    got, want, handles = [], [], []
    try:
        for b, name in enumerate(out_hooks):
            h = heads.get(f"blocks.{b}.attn.hook_result")
            if h is None:
                continue
            attn = pm.wrapped_model.blocks[b].attn
            b_o = getattr(attn, "b_O", None)
            handles.append(
                a.hook_dict[h.point].register_forward_hook(
                    lambda _m, _i, z, h=h, b_o=b_o: got.append(
                        h.outputs(z).sum(0) + (b_o if isinstance(b_o, torch.Tensor) else 0)
                    )
                )
            )
            handles.append(
                a.hook_dict[name].register_forward_hook(lambda _m, _i, out: want.append(out))
            )
        with torch.inference_mode():
            gen = torch.Generator().manual_seed(0)
            vocab = int(pm.cfg.d_vocab)
            pm.wrapped_model(torch.randint(vocab, (1, 3), generator=gen).to(pm.device))
    finally:
        for hd in handles:
            hd.remove()
    if len(got) != len(want):
        return False
    tol = math.sqrt(torch.finfo(want[0].dtype).eps) if want[0].dtype.is_floating_point else 1e-6
    return all(
        g.shape == w.shape
        and torch.allclose(g.double(), w.double(), rtol=tol, atol=tol * (1 + float(w.abs().max())))
        for g, w in zip(got, want)
    )
