"""The edge graph of a transformer, built from its config alone.

Factorized graph (Elhage et al. 2021): sources in topological order are ``Resid Start``
(embedding, the input of block 0), then per block ``b`` each head ``A{b}.{h}`` and
``MLP {b}``. Destinations are each head's Q/K/V input ``A{b}.{h}.Q`` (or one ``A{b}.{h}``
input when ``separate_qkv=False``), ``MLP {b}`` and ``Resid End``. Layers: ``Resid Start``
is 0, block ``b``'s attention ``2b+1`` and MLP ``2b+2`` (both ``b+1`` with parallel
attention/MLP), ``Resid End`` last. An edge exists when ``src.layer < dest.layer``.

Residual graph (``factorized=False``): each head and MLP has one edge, into the residual
stream right after its sub-layer (``Resid Mid {b}`` / ``Resid Post {b}``), so patching an
edge ablates that component's whole contribution (node ablation).

With grouped-query attention the K and V destinations exist per key/value head, unless
the model ungroups them (TransformerLens' ``ungroup_grouped_query_attention``, as MIB
loads its models): then each query head has its own K and V destination.

Every list is built in a fixed order from integers, so the same config gives the same
nodes, edges and mask shapes in every process. Edges are ordered by position
(``None`` or 0..seq_len-1), then destination, then source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from edgewise.types import QKV, DestNode, Edge, SrcNode


@dataclass(frozen=True)
class GraphSpec:
    """The architecture facts the graph depends on."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    attn_only: bool = False
    parallel_attn_mlp: bool = False

    @classmethod
    def from_config(cls, cfg: Any) -> GraphSpec:
        """From a TransformerLens ``HookedTransformerConfig`` / ``TransformerBridgeConfig``
        (or anything with the same field names). With ``ungroup_grouped_query_attention``
        set, every query head has its own key and value input (``n_kv_heads = n_heads``)."""
        n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
        if getattr(cfg, "ungroup_grouped_query_attention", False):
            n_kv = cfg.n_heads
        return cls(
            n_layers=int(cfg.n_layers),
            n_heads=int(cfg.n_heads),
            n_kv_heads=int(n_kv),
            attn_only=bool(getattr(cfg, "attn_only", False)),
            parallel_attn_mlp=bool(getattr(cfg, "parallel_attn_mlp", False)),
        )


@dataclass(frozen=True)
class DestModule:
    """One destination hook: every destination node reading at ``module_name``.

    ``n_heads`` is the size of the hook's head dimension (``None`` for ``[b, s, d]``
    hooks); the module reads sources ``src_lo .. src_hi - 1``. Its mask has shape
    ``([seq_len] +) ([n_heads] +) [src_hi - src_lo]``. ``block`` is the transformer block
    it reads in; ``kind`` is ``"attn"`` (a head's input; ``qkv`` says which one when they
    are separate), ``"mlp"`` or ``"resid"`` (the residual stream after a block).
    """

    module_name: str
    n_heads: int | None
    src_lo: int
    src_hi: int
    mask_shape: tuple[int, ...]
    block: int = 0
    kind: Literal["attn", "mlp", "resid"] = "resid"
    qkv: QKV | None = None


@dataclass(frozen=True)
class SrcModule:
    """One source hook: ``n_heads`` sources (``None``: one) starting at ``src_lo``;
    ``kind`` ``"embed"`` (block ``None``), ``"attn"`` or ``"mlp"`` of ``block``."""

    module_name: str
    n_heads: int | None
    src_lo: int
    block: int | None = None
    kind: Literal["embed", "attn", "mlp"] = "embed"

    @property
    def src_hi(self) -> int:
        """One past its last source."""
        return self.src_lo + (self.n_heads or 1)


@dataclass(frozen=True)
class Graph:
    srcs: tuple[SrcNode, ...]
    dests: tuple[DestNode, ...]
    edges: tuple[Edge, ...]
    src_modules: tuple[SrcModule, ...]
    dest_modules: tuple[DestModule, ...]
    seq_len: int | None
    factorized: bool
    separate_qkv: bool

    @property
    def n_edges(self) -> int:
        return len(self.edges)


RESID_START_HOOK = "blocks.0.hook_resid_pre"


def _resid_end_hook(spec: GraphSpec) -> str:
    return f"blocks.{spec.n_layers - 1}.hook_resid_post"


def _sources(spec: GraphSpec, factorized: bool) -> tuple[list[SrcNode], list[SrcModule]]:
    srcs: list[SrcNode] = []
    mods: list[SrcModule] = []
    if factorized:
        srcs.append(SrcNode("Resid Start", RESID_START_HOOK, 0, None, 0))
        mods.append(SrcModule(RESID_START_HOOK, None, 0))
    for b in range(spec.n_layers):
        attn_layer, mlp_layer = _block_layers(spec, b, factorized)
        hook = f"blocks.{b}.attn.hook_result"
        mods.append(SrcModule(hook, spec.n_heads, len(srcs), b, "attn"))
        for h in range(spec.n_heads):
            srcs.append(SrcNode(f"A{b}.{h}", hook, attn_layer, h, len(srcs), b, "attn"))
        if not spec.attn_only:
            hook = f"blocks.{b}.hook_mlp_out"
            mods.append(SrcModule(hook, None, len(srcs), b, "mlp"))
            srcs.append(SrcNode(f"MLP {b}", hook, mlp_layer, None, len(srcs), b, "mlp"))
    return srcs, mods


def _block_layers(spec: GraphSpec, b: int, factorized: bool) -> tuple[int, int]:
    """Layers of block ``b``'s attention and MLP."""
    if spec.parallel_attn_mlp:
        layer = b + 1 if factorized else 2 * b
        return layer, layer
    return (2 * b + 1, 2 * b + 2) if factorized else (3 * b, 3 * b + 1)


def build_graph(
    spec: GraphSpec,
    factorized: bool = True,
    separate_qkv: bool = True,
    seq_len: int | None = None,
) -> Graph:
    """Build the nodes, edges and mask layout for a model of shape ``spec``.

    Args:
        spec: the architecture.
        factorized: every source feeds every later destination (True), or each
            component feeds only the residual stream right after it (False).
        separate_qkv: separate query, key and value destinations per head.
        seq_len: if given, every edge exists once per token position.
    """
    if seq_len is not None and seq_len < 1:
        raise ValueError(f"seq_len must be a positive int or None, got {seq_len}")
    srcs, src_mods = _sources(spec, factorized)
    dests: list[DestNode] = []
    dest_mods: list[DestModule] = []
    seq_shape = () if seq_len is None else (seq_len,)

    def n_srcs_below(layer: int) -> int:
        return sum(1 for s in srcs if s.layer < layer)

    def add_module(hook: str, n_heads: int | None, lo: int, hi: int, block: int,
                   kind: Literal["attn", "mlp", "resid"], qkv: QKV | None = None) -> None:  # fmt: skip
        head_shape = () if n_heads is None else (n_heads,)
        shape = seq_shape + head_shape + (hi - lo,)
        dest_mods.append(DestModule(hook, n_heads, lo, hi, shape, block, kind, qkv))

    if factorized:
        for b in range(spec.n_layers):
            attn_layer, mlp_layer = _block_layers(spec, b, True)
            hi = n_srcs_below(attn_layer)
            if separate_qkv:
                for qkv in ("q", "k", "v"):  # type: QKV
                    hook = f"blocks.{b}.hook_{qkv}_input"
                    n = spec.n_heads if qkv == "q" else spec.n_kv_heads
                    add_module(hook, n, 0, hi, b, "attn", qkv)
                    for h in range(n):
                        name = f"A{b}.{h}.{qkv.upper()}"
                        dests.append(DestNode(name, hook, attn_layer, h, qkv, len(dests), b, "attn"))
            else:
                hook = f"blocks.{b}.hook_attn_in"
                add_module(hook, spec.n_heads, 0, hi, b, "attn")
                for h in range(spec.n_heads):
                    dests.append(DestNode(f"A{b}.{h}", hook, attn_layer, h, None, len(dests), b, "attn"))
            if not spec.attn_only:
                hook = f"blocks.{b}.hook_mlp_in"
                add_module(hook, None, 0, n_srcs_below(mlp_layer), b, "mlp")
                dests.append(DestNode(f"MLP {b}", hook, mlp_layer, None, None, len(dests), b, "mlp"))
        end_layer = max(s.layer for s in srcs) + 1
        hook = _resid_end_hook(spec)
        add_module(hook, None, 0, len(srcs), spec.n_layers - 1, "resid")
        dests.append(DestNode("Resid End", hook, end_layer, None, None, len(dests), spec.n_layers - 1))
    else:
        for b in range(spec.n_layers):
            heads = [s for s in srcs if s.module_name == f"blocks.{b}.attn.hook_result"]
            lo = heads[0].src_idx
            if spec.parallel_attn_mlp or spec.attn_only:
                hi = lo + spec.n_heads + (0 if spec.attn_only else 1)
                hook = f"blocks.{b}.hook_resid_post"
                name = "Resid End" if b == spec.n_layers - 1 else f"Resid Post {b}"
                add_module(hook, None, lo, hi, b, "resid")
                dests.append(DestNode(name, hook, heads[0].layer + 1, None, None, len(dests), b,
                                      min_src_idx=lo))
                continue
            hook = f"blocks.{b}.hook_resid_mid"
            add_module(hook, None, lo, lo + spec.n_heads, b, "resid")
            dests.append(DestNode(f"Resid Mid {b}", hook, heads[0].layer + 1, None, None, len(dests), b,
                                  min_src_idx=lo))
            hook = f"blocks.{b}.hook_resid_post"
            mlp = srcs[lo + spec.n_heads]
            add_module(hook, None, mlp.src_idx, mlp.src_idx + 1, b, "resid")
            name = "Resid End" if b == spec.n_layers - 1 else f"Resid Post {b}"
            dests.append(DestNode(name, hook, mlp.layer + 1, None, None, len(dests), b,
                                  min_src_idx=mlp.src_idx))

    mods_by_name = {m.module_name: m for m in dest_mods}
    edges: list[Edge] = []
    for seq_idx in [None] if seq_len is None else range(seq_len):
        pos = () if seq_idx is None else (seq_idx,)
        for d in dests:
            mod = mods_by_name[d.module_name]
            head = () if mod.n_heads is None else (d.head_idx,)
            for s in srcs[mod.src_lo : mod.src_hi]:
                edges.append(Edge(s, d, seq_idx, pos + head + (s.src_idx - mod.src_lo,)))
    return Graph(
        srcs=tuple(srcs),
        dests=tuple(dests),
        edges=tuple(edges),
        src_modules=tuple(src_mods),
        dest_modules=tuple(dest_mods),
        seq_len=seq_len,
        factorized=factorized,
        separate_qkv=separate_qkv,
    )
