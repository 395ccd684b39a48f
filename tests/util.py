"""Small random datasets for tests."""

from __future__ import annotations

import pytest
import torch

from edgewise import PromptDataLoader, PromptDataset
from edgewise.models import from_tl_weights, hooked_transformer_available

VOCAB = 20


def grad_tol(pm, exact: float) -> float:
    """``exact``, or 1e-6 where a float64 model normalises in float32: Hugging Face's
    RMSNorm on a Llama or Qwen 2 bridge, through which edgewise's hand-written gradient
    (Q/K/V patched after the projection) and autograd's agree to float32 rounding only."""
    native = any(getattr(h.norm, "native", None) is not None for h in pm.dest_hooks)
    return 1e-6 if native else exact


def random_loader(seed: int = 0, n: int = 6, seq: int = 5, batch_size: int = 3,
                  n_answers: int | list[int] = 1, vocab: int = VOCAB,
                  seq_len_edges: bool = False, drop_last: bool = True) -> PromptDataLoader:
    """Clean/corrupt prompts differing at the last two positions, random answers
    (``drop_last=False``: a last batch of ``n % batch_size`` prompts)."""
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, vocab, (n, seq), generator=gen)
    corrupt = clean.clone()
    corrupt[:, -2:] = torch.randint(3, vocab, (n, 2), generator=gen)
    counts = n_answers if isinstance(n_answers, list) else [n_answers] * n
    answers = [torch.randint(0, vocab, (c,), generator=gen) for c in counts]
    wrong = [torch.randint(0, vocab, (c,), generator=gen) for c in counts]
    ds = PromptDataset(clean, corrupt, answers, wrong)
    return PromptDataLoader(ds, seq_len=seq if seq_len_edges else None, diverge_idx=0,
                            batch_size=batch_size, drop_last=drop_last)


requires_hooked = pytest.mark.skipif(
    not hooked_transformer_available(),
    reason="HookedTransformer exists only in TransformerLens 3.x (4.x has bridges only)",
)


def hooked_only(why: str) -> pytest.MarkDecorator:
    """Skip on TransformerLens 4.x, which has no ``HookedTransformer``: for a test of an API
    only TransformerLens 3.x has, ``why`` naming it (and the bridge test of the same
    feature, if any)."""
    return pytest.mark.skipif(
        not hooked_transformer_available(),
        reason=f"HookedTransformer API, TransformerLens 3.x only: {why}",
    )


hooked_case = hooked_only("the HookedTransformer case of a test whose bridge cases run on 4.x")
"""The mark of a parametrized test's ``HookedTransformer`` case, beside its bridge cases."""


def planted_model(kind=None):
    """Attention-only, no LayerNorm. The embedding writes dims 0-3, head 0 copies them
    (uniform attention: W_Q = W_K = 0) into dims 4-7, and the unembedding reads only
    dims 4-7. Everything else is 1e-5 noise. So the answer flows through exactly
    Resid Start -> A0.0.V and A0.0 -> Resid End. A HookedTransformer or, on
    TransformerLens 4.x, a bridge over the same weights (``kind``)."""
    d, h, dh, n_ctx = 8, 2, 4, 32
    shapes = {
        "embed.W_E": (VOCAB, d), "pos_embed.W_pos": (n_ctx, d),
        "blocks.0.attn.W_Q": (h, d, dh), "blocks.0.attn.W_K": (h, d, dh),
        "blocks.0.attn.W_V": (h, d, dh), "blocks.0.attn.W_O": (h, dh, d),
        "blocks.0.attn.b_Q": (h, dh), "blocks.0.attn.b_K": (h, dh), "blocks.0.attn.b_V": (h, dh),
        "blocks.0.attn.b_O": (d,), "unembed.W_U": (d, VOCAB), "unembed.b_U": (VOCAB,),
    }
    g = torch.Generator().manual_seed(12)
    w = {k: 1e-5 * torch.randn(s, generator=g, dtype=torch.float64) for k, s in shapes.items()}
    w["embed.W_E"][:, :4] += torch.randn(VOCAB, 4, generator=g, dtype=torch.float64)
    w["blocks.0.attn.W_V"][0, :4] += torch.eye(4, dtype=torch.float64)
    w["blocks.0.attn.W_O"][0, :, 4:] += 3 * torch.eye(4, dtype=torch.float64)
    w["unembed.W_U"][4:] += torch.randn(4, VOCAB, generator=g, dtype=torch.float64)
    cfg = dict(n_layers=1, d_model=d, n_heads=h, d_head=dh, d_vocab=VOCAB, n_ctx=n_ctx,
               attn_only=True, normalization_type=None, act_fn=None, dtype=torch.float64)
    return from_tl_weights(cfg, w, kind=kind)
