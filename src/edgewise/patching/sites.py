"""Where edges are read and written in a TransformerLens model.

**Sources.** A source module's outputs ``[n, batch, seq, d_model]`` (``n`` heads, or 1)
are read at one hook. Head outputs are ``z_h @ W_O[h]``, computed from ``attn.hook_z``
with one batched matmul; TransformerLens' ``use_attn_result`` is only the fallback, as it
materialises ``[batch, seq, heads, d_head, d_model]`` and makes a forward pass several
times slower on a CPU.

With a norm of the summed head outputs before the residual stream (Gemma 2's
``post_attention_layernorm``), a head's output is its exact share of what the block adds
(:class:`edgewise.models.post_norm.PostNorm`); the MLP's output is read after its norm (``hook_mlp_out``).

**Destinations.** Most destinations are patched at the hook that carries their input
(``hook_mlp_in``, the final residual). Query, key and value inputs are patched *after* the projection instead, at ``attn.hook_q`` /
``hook_k`` / ``hook_v``, with the model's hook flags off::

    X'_h = X_h + (N(r + delta_h) - N(r)) @ W_X[h]     (computed as N(r + delta_h) @ W_X[h] + b_X[h])

where ``r`` is the block's residual input, ``N`` its ``ln1`` and ``delta_h`` the patch
added to head ``h``'s input; that is ``X'_h = N(r + delta_h) @ W_X[h] + b_X[h]``,
exactly what TransformerLens computes with ``use_split_qkv_input``. But destinations
whose masks are 0 cost nothing, and the per-head copies of the residual stream and of
``ln1`` that the flag makes for every head in every forward and backward pass (3x the
time of a GPT-2-small forward+backward at 32x32 tokens) are never built. On a
``TransformerBridge`` the same holds at the outputs of the Hugging Face Q/K/V
projections (``attn.hook_q`` etc., ``[b, p, heads * d_head]``), with ``W_X`` read from
the projection's ``nn.Linear`` and ``N`` the bridge's ``ln1`` as the bridge computes it
(see ``_bridge_norm``). Models where this is not known to hold (post-norm blocks, 4-bit
weights, norms not reproduced here) use TransformerLens' per-head input hooks, and
:func:`patchable_model` checks once that both give the same outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgewise.graph.build import DestModule, Graph, SrcModule
from edgewise.models.adapter import HookAdapter
from edgewise.models.post_norm import PostNorm, post_norm

_QKV = ("q", "k", "v")


# ---------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class SrcHook:
    """Where the outputs of one source module are read: the hook ``point`` that fires
    with them, and ``outputs`` mapping that hook's output to the sources' outputs
    ``[n, batch, seq, d_model]`` (``n`` heads, or 1)."""

    module: SrcModule
    point: str
    outputs: Callable[..., torch.Tensor]
    """``outputs(hook_output, into=None)``: the outputs, written to ``into`` (a contiguous
    ``[n, batch, seq, d_model]`` tensor) when given."""


def _heads_from_z(attn: nn.Module, n_heads: int) -> Callable[..., torch.Tensor]:
    def outputs(z: torch.Tensor, into: torch.Tensor | None = None) -> torch.Tensor:
        if z.ndim == 3:  # bridges give [batch, seq, heads * d_head]
            z = z.unflatten(-1, (n_heads, -1))
        b, p, h, d_head = z.shape
        # one [b*p, d_head] @ [d_head, d_model] product per head (no broadcast copy of W_O)
        z = z.permute(2, 0, 1, 3).reshape(h, b * p, d_head)
        if into is not None:
            torch.bmm(z, attn.W_O, out=into.view(h, b * p, -1))
            return into
        return torch.bmm(z, attn.W_O).view(h, b, p, -1)

    return outputs


def _heads_first(out: torch.Tensor, into: torch.Tensor | None = None) -> torch.Tensor:
    out = out.permute(2, 0, 1, 3)
    return out if into is None else into.copy_(out)


def _one_src(out: torch.Tensor, into: torch.Tensor | None = None) -> torch.Tensor:
    return out[None] if into is None else into.copy_(out[None])


def _post_normed(outputs: Callable[..., torch.Tensor], post: PostNorm | None) -> Callable[..., torch.Tensor]:
    """``outputs`` followed by :meth:`PostNorm.shares` (``outputs`` itself without one)."""
    if post is None:
        return outputs

    def normed(out: torch.Tensor, into: torch.Tensor | None = None) -> torch.Tensor:
        heads = outputs(out, into)
        return post.shares(heads, in_place=into is not None)

    return normed


def z_hooks_available(model: nn.Module, adapter: HookAdapter, graph: Graph) -> bool:
    """Whether every attention block has ``hook_z`` and a dense ``W_O [heads, d_head, d]``."""
    if getattr(adapter.cfg, "load_in_4bit", False):
        return False
    for mod in graph.src_modules:
        if mod.kind != "attn":
            continue
        b = mod.block
        try:
            w_o = model.blocks[b].attn.W_O
        except (AttributeError, IndexError, TypeError, NotImplementedError):
            return False
        if adapter.resolve(f"blocks.{b}.attn.hook_z") is None or not isinstance(w_o, torch.Tensor):
            return False
        if w_o.ndim != 3 or w_o.shape[0] != mod.n_heads:
            return False
    return True


def src_hooks(
    model: nn.Module, adapter: HookAdapter, graph: Graph, from_z: bool
) -> tuple[SrcHook, ...]:
    """One :class:`SrcHook` per source module, head outputs from ``hook_z`` if ``from_z``
    else from TransformerLens' ``hook_result``."""
    hooks = []
    for mod in graph.src_modules:
        post = post_norm(model, mod.block) if mod.kind == "attn" else None
        if mod.kind == "attn" and from_z:
            b = mod.block
            point = adapter.resolve(f"blocks.{b}.attn.hook_z")
            outputs = _heads_from_z(model.blocks[b].attn, mod.n_heads)
            hooks.append(SrcHook(mod, point, _post_normed(outputs, post)))
        else:
            outputs = _one_src if mod.n_heads is None else _post_normed(_heads_first, post)
            hooks.append(SrcHook(mod, adapter.resolve(mod.module_name) or mod.module_name, outputs))
    return tuple(hooks)


# ---------------------------------------------------------------------------- norms
@dataclass(frozen=True)
class Norm:
    """A block's ``ln1`` as TransformerLens computes it (``LN``, ``LNPre``, ``RMS``,
    ``RMSPre`` or none), on inputs with any leading dims, plus its Jacobian-transpose
    product for hand-written gradients. ``native``: a Hugging Face RMSNorm a bridge runs
    as it is (it normalises in float32 whatever the model's dtype): called for the
    values, its float32 statistics used for the gradients."""

    kind: str | None
    module: nn.Module | None
    native: nn.Module | None = None

    @property
    def centred(self) -> bool:
        return self.kind in ("LN", "LNPre")

    def normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_hat`` (centred for LayerNorm) and ``1 / sigma`` ``[..., 1]``, in float32
        or wider."""
        x = x.to(torch.float32 if self.native is not None else torch.promote_types(x.dtype, torch.float32))
        if self.centred:
            x = x - x.mean(-1, keepdim=True)
        inv = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.module.eps)  # type: ignore[union-attr]
        return x * inv, inv

    def __call__(self, x: torch.Tensor, shift: bool = True) -> torch.Tensor:
        """``ln1(x)`` over the last dim (without its bias if not ``shift``)."""
        if self.kind is None:
            return x
        if self.native is not None:  # an RMSNorm: no bias
            return self.native(x)
        dtype, d = x.dtype, x.shape[-1]
        w = self.weight()
        b = getattr(self.module, "b", None) if self.kind == "LN" and shift else None
        eps = self.module.eps  # type: ignore[union-attr]
        # TransformerLens normalises half-precision inputs in float32, then scales
        wide = dtype not in (torch.float32, torch.float64)
        if wide:
            x = x.float()
        if self.centred:
            x = F.layer_norm(x, (d,), None if wide else w, None if wide else b, eps)
        else:
            x = F.rms_norm(x, (d,), None if wide else w, eps)
        if wide:
            x = x.to(dtype)
            x = x if w is None else x * w
            x = x if b is None else x + b
        return x

    def weight(self) -> torch.Tensor | None:
        return getattr(self.module, "w", None) if self.kind in ("LN", "RMS") else None


def _norm(model: nn.Module, block: int) -> Norm | None:
    """The ``ln1`` of ``block`` if its type is one this module reproduces, else None."""
    from transformer_lens.components import LayerNorm, LayerNormPre, RMSNorm, RMSNormPre

    ln = getattr(model.blocks[block], "ln1", None)
    kinds = {LayerNorm: "LN", LayerNormPre: "LNPre", RMSNorm: "RMS", RMSNormPre: "RMSPre"}
    if type(ln) in kinds:
        return Norm(kinds[type(ln)], ln)
    if isinstance(ln, nn.Identity) or (ln is None and model.cfg.normalization_type is None):
        return Norm(None, None)
    return None


class _BridgeNormParams:
    """A bridge norm's parameters under TransformerLens' names (``w``, ``b``, ``eps``),
    read from its Hugging Face module on every access (they follow ``model.to``)."""

    def __init__(self, module: nn.Module, eps: float, has_bias: bool):
        self._module, self.eps, self._has_bias = module, eps, has_bias

    @property
    def w(self) -> torch.Tensor | None:
        return self._module.weight

    @property
    def b(self) -> torch.Tensor | None:
        return self._module.bias if self._has_bias else None


# Hugging Face RMSNorms computing weight * (x * rsqrt(mean(x^2) + eps)) in float32
# (not Gemma's 1 + weight)
_HF_RMS_NORMS = ("LlamaRMSNorm", "Qwen2RMSNorm", "MistralRMSNorm", "Qwen3RMSNorm")


def _bridge_norm(model: nn.Module, block: int) -> Norm | None:
    """The ``ln1`` of a bridge's ``block`` as :class:`Norm`, where it is known to compute
    what :class:`Norm` does: an identity; a ``torch.nn.LayerNorm`` or a plain Hugging
    Face RMSNorm run natively; or
    TransformerLens' own normalisation (``(x [- mean]) / sqrt(mean(x^2) + cfg.eps) *
    weight [+ bias]``, no weight offset) over a Hugging Face norm with a weight. Else
    None."""
    try:
        from transformer_lens.model_bridge.generalized_components.normalization import (
            NormalizationBridge,
        )
    except ImportError:  # pragma: no cover - every TransformerLens with bridges has it
        return None
    ln = getattr(model.blocks[block], "ln1", None)
    hf = getattr(ln, "original_component", None)
    if isinstance(hf, nn.Identity):
        return Norm(None, None)
    if not isinstance(ln, NormalizationBridge) or not isinstance(getattr(hf, "weight", None), torch.Tensor):
        return None
    cls = type(ln)
    own = all(getattr(cls, f) is getattr(NormalizationBridge, f)
              for f in ("forward", "_python_norm_forward", "_apply_weight_and_bias"))  # fmt: skip
    cfg = model.cfg
    rms_offset = getattr(cfg, "rmsnorm_uses_offset", False) or getattr(ln, "uses_weight_offset", False)
    if not own or rms_offset:
        return None
    rms = bool(getattr(ln, "uses_rms_norm", False))
    if getattr(ln, "use_native_layernorm_autograd", False) or getattr(cfg, "layer_norm_folding", False):
        # the Hugging Face module's own forward
        if type(hf) is nn.LayerNorm and hf.elementwise_affine:
            return Norm("LN", _BridgeNormParams(hf, float(hf.eps), hf.bias is not None))  # type: ignore[arg-type]
        if type(hf).__name__ in _HF_RMS_NORMS and not rms_offset:
            params = _BridgeNormParams(hf, float(hf.variance_epsilon), False)
            return Norm("RMS", params, native=hf)  # type: ignore[arg-type]
        return None
    bias = not rms and isinstance(getattr(hf, "bias", None), torch.Tensor)
    return Norm("RMS" if rms else "LN", _BridgeNormParams(hf, float(getattr(cfg, "eps", 1e-5)), bias))  # type: ignore[arg-type]


def _bridge_linear(model: nn.Module, block: int, qkv: str, n_heads: int, d_head: int) -> nn.Linear | None:
    """The ``nn.Linear`` a bridge's attention projects ``qkv`` with, if it holds
    ``n_heads`` heads of ``d_head`` (else None)."""
    hf = getattr(getattr(model.blocks[block].attn, qkv, None), "original_component", None)
    if type(hf) is not nn.Linear or tuple(hf.weight.shape) != (n_heads * d_head, int(model.cfg.d_model)):
        return None
    return hf


# ---------------------------------------------------------------------------- destinations
@dataclass(frozen=True)
class DestHook:
    """Where the inputs of one destination module are patched.

    ``point`` is the hook whose output is changed. For input destinations it carries the
    destination's input and the patch is added to it. For projected destinations
    (``resid`` set) it carries ``X = N(r) @ W + b`` (``attn.hook_q`` etc.), ``resid`` is
    the hook that carries ``r``, and :meth:`project` computes ``X`` from the patched
    per-head inputs instead.
    """

    module: DestModule
    point: str
    resid: str | None = None
    norm: Norm | None = None
    attn: nn.Module | None = None
    qkv: str | None = None
    # a bridge's projection (its Hugging Face Linear; ``point`` then carries ``X``
    # flat, ``[b, p, heads * d_head]``)
    linear: nn.Linear | None = None

    @property
    def projected(self) -> bool:
        return self.resid is not None

    @property
    def flat(self) -> bool:
        """Whether ``point`` carries ``X`` as ``[b, p, heads * d_head]`` (a bridge)."""
        return self.linear is not None

    def _param(self, kind: str) -> torch.Tensor:
        """``W_X`` or ``b_X`` of this destination's Q/K/V, per KV head where grouped."""
        if self.linear is not None:  # weight [heads * d_head, d_model], bias [heads * d_head]
            h = int(self.module.n_heads or 1)
            if kind == "W":
                return self.linear.weight.unflatten(0, (h, -1)).transpose(1, 2)
            b = self.linear.bias
            if b is None:
                w = self.linear.weight
                return torch.zeros(h, w.shape[0] // h, dtype=w.dtype, device=w.device)
            return b.view(h, -1)
        attn, x = self.attn, self.qkv.upper()  # type: ignore[union-attr]
        grouped = (
            x in "KV"
            and hasattr(attn, f"_{kind}_{x}")
            and not attn.cfg.ungroup_grouped_query_attention  # type: ignore[union-attr]
        )
        return getattr(attn, f"_{kind}_{x}" if grouped else f"{kind}_{x}")

    def weight(self) -> torch.Tensor:
        """``W_X [heads, d_model, d_head]`` (K/V per KV head with grouped-query attention)."""
        return self._param("W")

    def bias(self) -> torch.Tensor:
        """``b_X [heads, d_head]``, like :meth:`weight`."""
        return self._param("b")

    def shift(self) -> torch.Tensor:
        """``b + beta @ W`` ``[heads, d_head]``: ``X - shift = x_hat @ (W * gamma)``."""
        shift = self.bias()
        beta = getattr(self.norm.module, "b", None) if self.norm and self.norm.kind == "LN" else None
        if beta is not None:
            shift = shift + torch.einsum("d,hdk->hk", beta, self.weight())
        return shift[None, None]

    def project(
        self, x: torch.Tensor, z: torch.Tensor, heads: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The patched ``X' = N(z) @ W + b`` for ``z`` ``[h, b, p, d]``, the patched
        per-head inputs (heads first, so the projection is one batched matmul), shaped
        like ``x`` ``[b, p, h, d_head]``, the unpatched ``X`` at ``point``. With
        ``heads`` (indices), ``z`` holds only those heads and the others keep ``x``."""
        if self.flat:  # [b, p, heads * d_head] at a bridge's hook
            x4 = x.unflatten(-1, (int(self.module.n_heads or 1), -1))
            return self._project(x4, z, heads).flatten(-2)
        return self._project(x, z, heads)

    def _project(self, x: torch.Tensor, z: torch.Tensor, heads: torch.Tensor | None) -> torch.Tensor:
        """:meth:`project` with ``x`` ``[b, p, h, d_head]``."""
        norm = self.norm
        assert norm is not None
        h, b, p, d = z.shape
        w, bias = self.weight(), self.bias()
        if heads is not None:
            w, bias = w[heads], bias[heads]
        out = torch.bmm(norm(z).reshape(h, b * p, d), w)  # [h, b*p, d_head]
        out = (out.view(h, b, p, -1) + bias[:, None, None]).permute(1, 2, 0, 3).to(x.dtype)
        if heads is None:
            return out
        x = x.clone()
        x[:, :, heads] = out
        return x


def projected_dests_available(model: nn.Module, adapter: HookAdapter, graph: Graph) -> bool:
    """Whether Q/K/V destinations can be patched after the projection (see module doc)."""
    if adapter.is_bridge:
        return _bridge_projected_available(model, adapter, graph)
    if not adapter.is_hooked_transformer:
        return False
    try:
        from transformer_lens.components.transformer_block import POST_NORM_ARCHITECTURES
    except ImportError:  # pragma: no cover - older TransformerLens
        POST_NORM_ARCHITECTURES = ()
    cfg = adapter.cfg
    if getattr(cfg, "load_in_4bit", False):
        return False
    if getattr(cfg, "original_architecture", None) in POST_NORM_ARCHITECTURES:
        return False
    for mod in graph.dest_modules:
        if mod.qkv is None:
            continue
        b = mod.block
        if _norm(model, b) is None or adapter.resolve(f"blocks.{b}.hook_resid_pre") is None:
            return False
        if adapter.resolve(f"blocks.{b}.attn.hook_{mod.qkv}") is None:
            return False
    return True


def _bridge_projected_available(model: nn.Module, adapter: HookAdapter, graph: Graph) -> bool:
    """A bridge's Q/K/V destinations can be patched after the projection where each
    block's ``ln1`` is a norm :class:`Norm` reproduces, each projection a plain
    ``nn.Linear`` per head (its hook ``attn.hook_q`` etc. carrying its output), and
    nothing is added to the residual stream after the attention but the heads' sum."""
    cfg = adapter.cfg
    d_head = int(cfg.d_head)
    for mod in graph.dest_modules:
        if mod.qkv is None:
            continue
        b = mod.block
        if post_norm(model, b) is not None or _bridge_norm(model, b) is None:
            return False
        if _bridge_linear(model, b, mod.qkv, int(mod.n_heads or 1), d_head) is None:
            return False
        if adapter.resolve(f"blocks.{b}.hook_resid_pre") is None:
            return False
        if adapter.resolve(f"blocks.{b}.attn.hook_{mod.qkv}") is None:
            return False
    return True


def dest_hooks(
    model: nn.Module, adapter: HookAdapter, graph: Graph, projected: bool
) -> tuple[DestHook, ...]:
    """One :class:`DestHook` per destination module; Q/K/V projected if ``projected``."""
    hooks = []
    for mod in graph.dest_modules:
        if projected and mod.qkv is not None and adapter.is_bridge:
            b, qkv = mod.block, mod.qkv
            hooks.append(
                DestHook(
                    mod,
                    point=adapter.resolve(f"blocks.{b}.attn.hook_{qkv}"),  # type: ignore[arg-type]
                    resid=adapter.resolve(f"blocks.{b}.hook_resid_pre"),
                    norm=_bridge_norm(model, b),
                    attn=model.blocks[b].attn,
                    qkv=qkv,
                    linear=_bridge_linear(model, b, qkv, int(mod.n_heads or 1), int(adapter.cfg.d_head)),
                )
            )
        elif projected and mod.qkv is not None:
            b, qkv = mod.block, mod.qkv
            hooks.append(
                DestHook(
                    mod,
                    point=adapter.resolve(f"blocks.{b}.attn.hook_{qkv}"),  # type: ignore[arg-type]
                    resid=adapter.resolve(f"blocks.{b}.hook_resid_pre"),
                    norm=_norm(model, b),
                    attn=model.blocks[b].attn,
                    qkv=qkv,
                )
            )
        else:
            hooks.append(DestHook(mod, adapter.resolve(mod.module_name) or mod.module_name))
    return tuple(hooks)


def needed_flags(graph: Graph, projected: bool, heads_from_z: bool) -> dict[str, bool]:
    """The TransformerLens hook flags the hooks of ``graph`` need on."""
    mods = graph.dest_modules
    flags = {
        "use_split_qkv_input": not projected and any(m.qkv is not None for m in mods),
        "use_attn_in": any(m.kind == "attn" and m.qkv is None for m in mods),
        "use_hook_mlp_in": any(m.kind == "mlp" for m in mods),
        "use_attn_result": not heads_from_z and any(m.n_heads for m in graph.src_modules),
    }
    return {f: v for f, v in flags.items() if v}
