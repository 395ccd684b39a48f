"""MIB's evaluation measured per prompt, and bootstrap intervals of its CPR and CMD.

MIB (``hannamw/MIB-circuit-track``: ``MIB_circuit_track/evaluation.py``
``evaluate_area_under_curve``; read in the forks ``aryamanarora/MIB-circuit-track`` and
``cisnlp/MIB-circuit-track``) measures every prompt under every circuit and reports only
the mean over prompts. This module keeps the per-prompt values (:class:`MibMeasurements`)
so that the same evaluation can be recomputed on resampled prompts: a resample draws the
``n`` prompts with replacement (:func:`~edgewise.evaluation.bootstrap.resample_indices`),
every mean becomes that resample's mean, and faithfulness, CPR and CMD follow as MIB
computes them (:func:`~edgewise.mib.evaluate.mib_faithfulness`,
:func:`~edgewise.mib.evaluate.mib_area`): no circuit runs again. Intervals are percentile
intervals (:func:`~edgewise.evaluation.bootstrap.percentile_interval`). The bootstrap is
not an MIB convention; the point estimates are MIB's.

Levels. Edges: :func:`~edgewise.mib.evaluate.mib_evaluate` (top-n edges, pruned).
Nodes and neurons: MIB's same loop with ``level="node"`` / ``"neuron"``:
``int(p * n_units)`` units for each fraction ``p`` of
:data:`~edgewise.mib.evaluate.MIB_PERCENTAGES`, where ``n_units`` counts the scored
nodes (the graph's sources) or neurons (sources times ``d_model``); the empty circuit
and the full model are the same as for edges; the same trapezoids over the fractions.
The units kept are :func:`~edgewise.evaluation.node_circuits.node_circuit`'s (ties in
graph order; MIB's ``torch.argsort`` leaves ties unspecified). CPR comes from the signed
ranking and CMD from the ``abs`` one, as for edges (the leaderboard's pairing; that it
applies to node and neuron submissions too was not confirmed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch

from edgewise.data import PromptDataLoader
from edgewise.data.checks import scoring_entry
from edgewise.evaluation.bootstrap import (
    _check_bootstrap_args,
    percentile_interval,
    resample_indices,
    resample_weights,
)
from edgewise.evaluation.node_circuits import n_scored_units, node_score_level, run_node_circuits
from edgewise.mib.evaluate import (
    MIB_PERCENTAGES,
    MibResult,
    measure_circuits_per_prompt,
    mib_area,
    mib_evaluate,
    mib_faithfulness,
    prompt_logit_diffs,
)
from edgewise.patching.model import PatchableModel
from edgewise.runtime.memory import MaxMemory
from edgewise.types import Edge, NodeScores, PruneScores

__all__ = [
    "MibIntervals",
    "MibMeasurements",
    "mib_bootstrap",
    "mib_evaluate_per_prompt",
    "mib_evaluate_nodes_per_prompt",
]


@dataclass(frozen=True)
class MibMeasurements:
    """Every prompt's logit difference in one MIB evaluation.

    Attributes:
        level: ``"edge"``, ``"node"`` or ``"neuron"``.
        sizes: units requested at each of the ten fractions (``int(p * n_units)``).
        n_units: edges, nodes or neurons there are to choose from.
        signed / absolute: ten tensors ``[n_prompts]`` float64 each, the circuits chosen
            by signed score (CPR's) and by ``abs`` score (CMD's), in fraction order.
        empty / full: ``[n_prompts]`` float64, the empty circuit (the corrupted run) and
            the full model (the clean run).
    """

    level: str
    sizes: list[int]
    n_units: int
    signed: list[torch.Tensor]
    absolute: list[torch.Tensor]
    empty: torch.Tensor
    full: torch.Tensor

    @property
    def n_prompts(self) -> int:
        return int(self.full.shape[0])

    def point(self) -> tuple[list[float], list[float], float, float]:
        """``(curve_cpr, curve_cmd, cpr, cmd)`` of all prompts, averaged exactly as
        :func:`~edgewise.mib.evaluate.measure_circuits` averages (``tensor.mean()``)."""
        empty, full = self.empty.mean().item(), self.full.mean().item()
        curves = [
            [mib_faithfulness(v.mean().item(), empty, full) for v in vals]
            for vals in (self.signed, self.absolute)
        ]
        return curves[0], curves[1], mib_area(curves[0])[0], mib_area(curves[1])[1]


def _recorder(
    sink: list[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]],
    progress: bool,
    max_memory: MaxMemory,
    model: PatchableModel,
    dataloader: PromptDataLoader,
    circuits: Sequence[set[Edge]],
) -> tuple[list[float], float, float]:
    """A ``measure`` for :func:`mib_evaluate` that keeps the per-prompt values."""
    values, empty, full = measure_circuits_per_prompt(
        model, dataloader, circuits, progress, max_memory
    )
    sink.append((values, empty, full))
    return [v.mean().item() for v in values], empty.mean().item(), full.mean().item()


@scoring_entry
def mib_evaluate_per_prompt(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    prune_scores: PruneScores,
    progress: bool = False,
    max_memory: MaxMemory = None,
) -> tuple[MibResult, MibMeasurements]:
    """:func:`~edgewise.mib.evaluate.mib_evaluate` (the same call: its result is
    returned unchanged) and the per-prompt values behind it.

    Args:
        model: a patchable model with MIB's graph (``seq_len=None``).
        dataloader: prompt pairs with one answer and one wrong answer each.
        prune_scores: destination module -> scores shaped like its mask.

    Returns:
        ``(result, measurements)``; ``measurements.point()`` equals the result's curves,
        CPR and CMD.
    """
    sink: list[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]] = []
    result = mib_evaluate(
        model, dataloader, prune_scores,
        measure=partial(_recorder, sink, progress, max_memory),
    )  # fmt: skip
    (signed, empty, full), (absolute, _, _) = sink
    return result, MibMeasurements(
        "edge", list(result.sizes), model.n_edges, signed, absolute, empty, full
    )


@scoring_entry
def mib_evaluate_nodes_per_prompt(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    scores: NodeScores,
    progress: bool = False,
) -> MibMeasurements:
    """MIB's node- or neuron-level evaluation of ``scores`` (the level is read from
    their shapes), per prompt: at each fraction ``p``, the ``int(p * n_units)`` units of
    largest signed score (CPR) and of largest ``abs`` score (CMD) kept, everything else
    ablated from the corrupted prompt for every reader
    (:func:`~edgewise.evaluation.node_circuits.run_node_circuits`).

    Args:
        model: the patchable model (``seq_len=None``).
        dataloader: prompt pairs with one answer and one wrong answer each.
        scores: node scores ``{source module: [n]}`` or neuron scores ``[n, d_model]``.

    Returns:
        :class:`MibMeasurements` of level ``"node"`` or ``"neuron"``.
    """
    level = node_score_level(model, scores)
    total = n_scored_units(model, level)
    sizes = [int(p * total) for p in MIB_PERCENTAGES]
    runs = []
    for absolute in (False, True):
        outs = run_node_circuits(
            model, dataloader, sorted({0, total, *sizes}), scores,
            absolute=absolute, progress=progress,
        )  # fmt: skip
        runs.append(prompt_logit_diffs(model, dataloader, outs))
    signed, absolute_run = runs
    return MibMeasurements(
        level, sizes, total, [signed[n] for n in sizes], [absolute_run[n] for n in sizes],
        signed[0], signed[total],
    )  # fmt: skip


@dataclass(frozen=True)
class MibIntervals:
    """MIB's curves, CPR and CMD with bootstrap intervals over prompts.

    Attributes:
        level, sizes, n_units: as in :class:`MibMeasurements`.
        curve_cpr / curve_cmd: the faithfulness of all prompts at each fraction, signed
            and ``abs`` ranking.
        band_cpr / band_cmd: ``(lower, upper)`` of each point of those curves.
        cpr / cmd: ``(point, lower, upper)``.
        level_ci: the intervals' level (0.95: the 2.5% and 97.5% percentiles).
        n_resamples, seed: the resamples.
    """

    level: str
    sizes: list[int]
    n_units: int
    curve_cpr: list[float]
    curve_cmd: list[float]
    band_cpr: list[tuple[float, float]]
    band_cmd: list[tuple[float, float]]
    cpr: tuple[float, float, float]
    cmd: tuple[float, float, float]
    level_ci: float
    n_resamples: int
    seed: int

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict of every field (bands as ``[lower, upper]`` rows)."""
        return {
            "level": self.level, "sizes": self.sizes, "n_units": self.n_units,
            "percentages": list(MIB_PERCENTAGES),
            "curve_cpr": self.curve_cpr, "curve_cmd": self.curve_cmd,
            "band_cpr": [list(b) for b in self.band_cpr],
            "band_cmd": [list(b) for b in self.band_cmd],
            "cpr": list(self.cpr), "cmd": list(self.cmd),
            "bootstrap": {"level": self.level_ci, "n_resamples": self.n_resamples,
                          "seed": self.seed, "over": "prompts"},
        }  # fmt: skip


def mib_bootstrap(
    measurements: MibMeasurements, n_resamples: int = 100, level: float = 0.95, seed: int = 0
) -> MibIntervals:
    """Percentile intervals of MIB's faithfulness curves, CPR and CMD over resampled
    prompts: each resample's means are its prompts' values averaged with equal weight
    (``[n_resamples, n_prompts]`` weights times ``[n_prompts, 10]`` values), then
    faithfulness, CPR and CMD exactly as MIB computes them. The points are
    :meth:`MibMeasurements.point` (all prompts).

    Raises:
        ValueError: a bad ``n_resamples`` / ``level`` / ``seed``, or a resample whose full
            model and empty circuit score the same (its faithfulness is undefined),
            naming it.
    """
    n_resamples, level, seed = _check_bootstrap_args(n_resamples, level, seed)
    n = measurements.n_prompts
    curve_cpr, curve_cmd, cpr, cmd = measurements.point()
    weights = resample_weights(
        resample_indices(n, n_resamples, seed), torch.full((n,), 1.0 / n, dtype=torch.float64), n
    )  # [N, n]: each prompt's share of each resample
    cols = torch.stack(
        [*measurements.signed, *measurements.absolute, measurements.empty, measurements.full],
        dim=1,
    ).to(torch.float64)  # [n, 22]
    means = (weights @ cols).tolist()  # [N, 22]
    k = len(measurements.signed)
    curves_s, curves_a, areas = [], [], []
    for r, row in enumerate(means):
        empty, full = row[-2], row[-1]
        try:
            fs = [mib_faithfulness(v, empty, full) for v in row[:k]]
            fa = [mib_faithfulness(v, empty, full) for v in row[k : 2 * k]]
        except ValueError as e:
            raise ValueError(f"mib_bootstrap: resample {r} (seed {seed}): {e}") from None
        curves_s.append(fs)
        curves_a.append(fa)
        areas.append([mib_area(fs)[0], mib_area(fa)[1]])
    lo_s, hi_s = percentile_interval(torch.tensor(curves_s, dtype=torch.float64), level)
    lo_a, hi_a = percentile_interval(torch.tensor(curves_a, dtype=torch.float64), level)
    a_lo, a_hi = percentile_interval(torch.tensor(areas, dtype=torch.float64), level)
    return MibIntervals(
        level=measurements.level, sizes=list(measurements.sizes), n_units=measurements.n_units,
        curve_cpr=curve_cpr, curve_cmd=curve_cmd,
        band_cpr=list(zip(lo_s.tolist(), hi_s.tolist())),
        band_cmd=list(zip(lo_a.tolist(), hi_a.tolist())),
        cpr=(cpr, float(a_lo[0]), float(a_hi[0])), cmd=(cmd, float(a_lo[1]), float(a_hi[1])),
        level_ci=level, n_resamples=n_resamples, seed=seed,
    )  # fmt: skip
