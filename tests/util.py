"""Small random datasets for tests."""

from __future__ import annotations

import torch

from edgewise import PromptDataLoader, PromptDataset

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
