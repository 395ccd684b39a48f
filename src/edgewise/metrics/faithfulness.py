"""Faithfulness over circuit size and its areas (the MIB benchmark's CPR and CMD), and
ROC curves of scores against a known circuit."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from edgewise.patching.model import PatchableModel
from edgewise.types import Edge, Measurements, PruneScores


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


def measurements_auc(
    points: Measurements,
    log_x: bool,
    log_y: bool,
    y_min: float | None = None,
    eps: float = 1e-3,
) -> float:
    """auto-circuit's area under a curve of (circuit size, value) points, above the value
    of the empty circuit. Points are sorted by size and must start at size 0. Trapezoids
    between consecutive points; with ``log_x`` sizes become ``log10(size)`` and segments
    touching size 0 are left out; with ``log_y`` values are clamped below at ``y_min``
    and become ``log10(y) - log10(y_min)``. The baseline (the empty circuit's value) goes
    through the same transform, unlike auto-circuit 1.0.1, which subtracts the raw value
    from log-scaled ones (``docs/auto_circuit.md``). Returns at least ``eps``."""
    pts = sorted(points)
    if not pts or pts[0][0] != 0:
        raise ValueError("measurements_auc needs a point at circuit size 0 (the empty circuit)")
    if log_y and y_min is None:
        raise ValueError("log_y needs y_min, the value that log-scaled values are clamped to")

    def y_of(y: float) -> float:
        return math.log10(max(y, y_min)) - math.log10(y_min) if log_y else y  # type: ignore[arg-type]

    base = y_of(pts[0][1])
    area = 0.0
    for (x1, y1), (x2, y2) in zip(pts, pts[1:]):
        if log_x and (x1 == 0 or x2 == 0):
            continue
        fx1, fx2 = (math.log10(x1), math.log10(x2)) if log_x else (x1, x2)
        area += (fx2 - fx1) * ((y_of(y1) - base) + (y_of(y2) - base)) / 2
    return max(area, eps)


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
        raise ValueError(
            f"measure_roc: {len(unknown)} official edge(s) are not in the model's graph "
            f"({model.n_edges} edges, seq_len={model.seq_len}), e.g. "
            f"{', '.join(sorted(map(repr, unknown))[:3])}; build the official circuit from this "
            "model (e.g. task.official_edges(model))"
        )
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
