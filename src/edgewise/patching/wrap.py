"""Wrapping a model: :func:`patchable_model` builds the graph, chooses the hook sites,
switches on the TransformerLens flags they need and checks them on the model."""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import torch
from torch import nn

from edgewise.checks import eval_mode, require_device, require_int
from edgewise.graph.build import Graph, GraphSpec, build_graph
from edgewise.models.adapter import HookAdapter
from edgewise.patching.model import PatchableModel
from edgewise.patching.sites import (
    dest_hooks,
    needed_flags,
    projected_dests_available,
    src_hooks,
    z_hooks_available,
)

SliceOutput = Literal["last_seq", "not_first_seq"] | bool | None


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
    ungroup_kv: bool | None = None,
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

    A model in training mode (dropout on) is checked in eval mode and left in training
    mode, with a warning (once per model): edgewise's scoring and evaluation functions
    run it in eval mode, dropout off, and restore its mode when they return; calling
    the returned model directly (``pm(tokens)``) runs it as it is, like any module.

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
            ``(train.kv_cache, test.kv_cache)``, as in auto-circuit), built with this
            model (TransformerLens' key-value caches for a ``HookedTransformer``,
            :class:`~edgewise.models.bridge_blocks.BridgePrefixCache` s for a
            ``TransformerBridge``); see :meth:`PatchableModel.set_kv_caches`.
        ungroup_kv: with grouped-query attention, give each query head its own K and V
            destination (``True``: MIB's graph, ``a{l}.h{h}<k>`` per query head), one per
            key/value head (``False``), or follow the model's
            ``cfg.ungroup_grouped_query_attention`` (``None``). Sets that TransformerLens
            option on a ``HookedTransformer``; switches a ``TransformerBridge``'s attention
            in place (:func:`edgewise.models.ungroup.set_bridge_ungrouped_kv`: same
            outputs, one key/value input per query head).
    """
    adapter = HookAdapter(model)
    adapter.check_patchable()
    adapter.set_ungrouped_kv(ungroup_kv)
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
    with eval_mode(model, "patchable_model"):  # dropout would fail the agreement check
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
        if h.flat and len(shape) == 3:  # a bridge's [b, p, heads * d_head]
            w = h.weight()
            got = w.shape[0] if shape[2] == w.shape[0] * w.shape[2] else None
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
