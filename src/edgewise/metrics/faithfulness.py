"""Faithfulness over circuit size and its areas (the MIB benchmark's CPR and CMD), and
ROC curves of scores against a known circuit."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from edgewise.patching import PatchableModel
from edgewise.types import Edge, PruneScores

Measurements = list[tuple[int, float]]


def faithfulness_curve(
    measurements: Measurements, empty: float | None = None, full: float | None = None
) -> Measurements:
    """``(size, (m(C) - m(empty)) / (m(full) - m(empty)))`` for each measured circuit.

    ``empty`` and ``full`` default to the measurement at the smallest and the largest
    size, so measure sizes 0 and ``n_edges`` too (``edge_counts_util`` adds them).
    """
    points = sorted(measurements)
    if not points:
        raise ValueError("no measurements")
    empty = points[0][1] if empty is None else empty
    full = points[-1][1] if full is None else full
    if full == empty:
        raise ValueError("the full model and the empty circuit score the same: faithfulness is undefined")
    return [(size, (value - empty) / (full - empty)) for size, value in points]


def area_under_curve(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Trapezoid area with ``xs`` rescaled to ``[0, 1]`` by their last value."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError("need at least two points with one y per x")
    top = xs[-1]
    return sum((xs[i + 1] - xs[i]) / top * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1))


def cpr_cmd(
    measurements: Measurements, empty: float | None = None, full: float | None = None
) -> tuple[float, float]:
    """MIB's circuit performance ratio (area under the faithfulness curve, higher is
    better) and circuit-model difference (area under ``|1 - faithfulness|``, lower is
    better), over circuit size as a fraction of the largest size measured."""
    curve = faithfulness_curve(measurements, empty, full)
    xs = [float(s) for s, _ in curve]
    cpr = area_under_curve(xs, [f for _, f in curve])
    cmd = area_under_curve(xs, [abs(1 - f) for _, f in curve])
    return cpr, cmd


@dataclass(frozen=True)
class Roc:
    """ROC points (one per group of tied importance, from (0, 0) to (1, 1)) and AUC."""

    fpr: list[float]
    tpr: list[float]
    auc: float


def measure_roc(
    model: PatchableModel, official_edges: Iterable[Edge], prune_scores: PruneScores
) -> Roc:
    """ROC of ``abs(prune_scores)`` as a detector of ``official_edges``.

    Edges of equal importance are taken together: each group adds one point, joined to
    the previous by a straight line (so ties count half, as in a rank AUC)."""
    official = set(official_edges)
    unknown = official - set(model.edges)
    if unknown:
        raise ValueError(f"official edges not in the model's graph: {sorted(map(repr, unknown))[:3]}")
    n_pos, n_neg = len(official), model.n_edges - len(official)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC needs at least one official and one non-official edge")
    importance = torch.tensor(
        [abs(float(prune_scores[e.dest.module_name][e.patch_idx])) for e in model.edges],
        dtype=torch.float64,
    )
    is_pos = torch.tensor([e in official for e in model.edges])
    values, group = torch.unique(importance, sorted=True, return_inverse=True)
    pos = torch.zeros(len(values), dtype=torch.float64).index_add_(0, group, is_pos.double())
    neg = torch.zeros(len(values), dtype=torch.float64).index_add_(0, group, (~is_pos).double())
    tpr = [0.0] + (torch.cumsum(pos.flip(0), 0) / n_pos).tolist()
    fpr = [0.0] + (torch.cumsum(neg.flip(0), 0) / n_neg).tolist()
    auc = sum((fpr[i + 1] - fpr[i]) * (tpr[i + 1] + tpr[i]) / 2 for i in range(len(fpr) - 1))
    return Roc(fpr=fpr, tpr=tpr, auc=auc)
