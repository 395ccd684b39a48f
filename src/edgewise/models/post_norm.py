"""Norms of the summed attention-head outputs before the residual stream (Gemma 2's
``post_attention_layernorm``, TransformerLens' ``blocks.i.ln1_post``) and how a head's
output is read through one, so per-head edges stay exact."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def _tl_class(name: str) -> type | None:
    """``transformer_lens.components.<name>`` (TransformerLens 3.x), else None (4.x)."""
    try:
        import transformer_lens.components as components
    except ImportError:
        return None
    return getattr(components, name, None)


@dataclass(frozen=True)
class PostNorm:
    """A block's RMSNorm of the summed head outputs (Gemma 2's ``post_attention_layernorm``,
    TransformerLens' ``ln1_post``). For a fixed input it scales each dimension by
    ``gamma_i / rms(total)``, so it splits exactly into per-head terms: head ``h`` adds
    ``(z_h @ W_O[h] + b_O / n_heads) * ln1_post(total) / total`` to the residual stream,
    ``total = sum_h z_h @ W_O[h] + b_O``, and these terms sum to what the block adds.
    The source output of a head is its term, read after the norm (a dimension where
    ``total`` is exactly 0 gives every head 0 there, which keeps the sum)."""

    module: nn.Module
    bias: torch.Tensor | None

    def normed(self, total: torch.Tensor) -> torch.Tensor:
        """``ln1_post(total)`` ``[..., d_model]``, as the model computes it, without firing
        any hook."""
        ln = self.module
        tl_rms = _tl_class("RMSNorm")
        if tl_rms is not None and isinstance(ln, tl_rms):  # TransformerLens's, its hooks left out
            x = total
            if ln.cfg.dtype not in (torch.float32, torch.float64):
                x = x.to(torch.float32)
            scale = (x.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt()
            return (x / scale).to(ln.cfg.dtype) * ln.w
        return ln(total)  # a Hugging Face RMSNorm (no hooks)

    def shares(self, heads: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        """Each head's term ``[h, batch, seq, d_model]`` from its output before the norm
        ``heads`` (same shape), overwriting ``heads`` if ``in_place``."""
        n = heads.shape[0]
        total = heads.sum(0)
        if self.bias is not None:
            total = total + self.bias
            heads = heads.add_(self.bias / n) if in_place else heads + self.bias / n
        out = self.normed(total)
        factor = torch.where(total == 0, torch.zeros_like(out), out / total)
        return heads.mul_(factor) if in_place else heads * factor


def post_norm(model: nn.Module, block: int) -> PostNorm | None:
    """Block ``block``'s norm of the summed head outputs, if it has one that is not the
    identity; raise for a centred one (LayerNorm), which splits into no per-head terms."""
    ln = getattr(model.blocks[block], "ln1_post", None)
    ln = getattr(ln, "original_component", ln)
    if ln is None or isinstance(ln, nn.Identity):
        return None
    # TransformerLens' LayerNorm / LayerNormPre, torch's and Hugging Face's LayerNorms
    if isinstance(ln, nn.LayerNorm) or "LayerNorm" in type(ln).__name__:
        raise ValueError(
            f"{type(model).__name__} normalises the sum of its attention heads' outputs with a "
            f"centred norm (blocks.{block}.ln1_post, {type(ln).__name__}): it subtracts the "
            "mean over heads, so it splits into no per-head terms and per-head edges cannot "
            "be patched exactly. edgewise splits RMSNorms there (Gemma 2)."
        )
    bias = getattr(model.blocks[block].attn, "b_O", None)
    return PostNorm(ln, bias if isinstance(bias, torch.Tensor) else None)
