"""How closely two sets of edge scores agree: the same algorithm in two precisions, or
two algorithms on one model. Scores are flat tensors over the same edges (see
:func:`edgewise.evaluation.circuits.flat_prune_scores`)."""

from __future__ import annotations

import math

import torch


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``max |got - want| / max |want|``, in float64."""
    got, want = got.double(), want.double()
    return float((got - want).abs().max() / want.abs().max())


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two flat tensors of scores."""
    return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation (ties ranked by position, deterministically)."""

    def ranks(x: torch.Tensor) -> torch.Tensor:
        return torch.argsort(torch.argsort(x, stable=True), stable=True).double()

    return pearson(ranks(a), ranks(b))


def top_overlap(got: torch.Tensor, want: torch.Tensor, frac: float = 0.1) -> float:
    """The fraction of ``want``'s top ``frac`` edges by ``|score|`` that are also among
    ``got``'s top ``frac``."""
    k = max(1, math.ceil(frac * want.numel()))
    top = set(want.abs().topk(k).indices.tolist())
    return len(top & set(got.abs().topk(k).indices.tolist())) / k
