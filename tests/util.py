"""Small random datasets for tests."""

from __future__ import annotations

import torch

from edgewise import PromptDataLoader, PromptDataset
from edgewise.models import random_hooked_transformer

VOCAB = 20


def random_loader(seed: int = 0, n: int = 6, seq: int = 5, batch_size: int = 3,
                  n_answers: int | list[int] = 1, vocab: int = VOCAB,
                  seq_len_edges: bool = False) -> PromptDataLoader:
    """Clean/corrupt prompts differing at the last two positions, random answers."""
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, vocab, (n, seq), generator=gen)
    corrupt = clean.clone()
    corrupt[:, -2:] = torch.randint(3, vocab, (n, 2), generator=gen)
    counts = n_answers if isinstance(n_answers, list) else [n_answers] * n
    answers = [torch.randint(0, vocab, (c,), generator=gen) for c in counts]
    wrong = [torch.randint(0, vocab, (c,), generator=gen) for c in counts]
    ds = PromptDataset(clean, corrupt, answers, wrong)
    return PromptDataLoader(ds, seq_len=seq if seq_len_edges else None, diverge_idx=0,
                            batch_size=batch_size)


def planted_model():
    """Attention-only, no LayerNorm. The embedding writes dims 0-3, head 0 copies them
    (uniform attention: W_Q = W_K = 0) into dims 4-7, and the unembedding reads only
    dims 4-7. Everything else is 1e-5 noise. So the answer flows through exactly
    Resid Start -> A0.0.V and A0.0 -> Resid End."""
    model = random_hooked_transformer(n_layers=1, n_heads=2, d_head=4, d_vocab=VOCAB,
                                      attn_only=True, normalization_type=None, dtype=torch.float64, seed=12)
    g = torch.Generator().manual_seed(12)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(1e-5 * torch.randn(p.shape, generator=g, dtype=torch.float64))
        model.embed.W_E[:, :4] += torch.randn(VOCAB, 4, generator=g, dtype=torch.float64)
        model.blocks[0].attn.W_V[0, :4] += torch.eye(4, dtype=torch.float64)
        model.blocks[0].attn.W_O[0, :, 4:] += 3 * torch.eye(4, dtype=torch.float64)
        model.unembed.W_U[4:] += torch.randn(4, VOCAB, generator=g, dtype=torch.float64)
    return model
