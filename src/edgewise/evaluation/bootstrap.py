"""How stable scores and faithfulness are: a bootstrap over prompt pairs.

Each of ``n_resamples`` resamples draws the ``n`` prompt pairs that the dataloader
yields, with replacement (``torch.Generator`` seeded with ``seed``: the same resamples on
every run and machine), and keeps the loader's batching: position ``j`` of a resample
falls in the same batch, of the same size, as position ``j`` of the original. Intervals
are percentile intervals: at ``level`` (default 0.95) the bounds are the ``(1 - level)/2``
and ``(1 + level)/2`` quantiles of the resampled statistics, linearly interpolated
between order statistics (NumPy's default ``"linear"`` method, Hyndman and Fan's type 7).

Two ways to score a resample (:func:`bootstrap_scores`):

- ``"per-prompt"``, for the mask-gradient algorithms (EAP, IG, IG per layer) with an
  ablation that depends on one prompt pair only (resample, zero): their score is a sum
  over batches of the gradient of the batch's mean loss, i.e. ``sum_j g_{i_j} / |b(j)|``
  over positions ``j`` of prompts ``i_j``. Each prompt's gradient ``g_i`` is computed
  once (one batch of one prompt) and every resample is a weighted sum of them, which is
  exactly what scoring the resampled prompts would give (up to float rounding).
- ``"rescore"``, for every other algorithm or ablation: the algorithm runs again on each
  resample (``n_resamples`` times its cost).

:func:`bootstrap_faithfulness` resamples the per-prompt metric of each circuit that
:func:`~edgewise.evaluation.circuits.run_circuits` returns (its outputs are already per
prompt, so no circuit runs again), and recomputes the faithfulness curve, CPR and CMD
(:mod:`edgewise.metrics.faithfulness`) on every resample.

The bootstrap is not an MIB convention. MIB's circuit track (``hannamw/MIB-circuit-track``,
``evaluate_graph.py``) measures each prompt (``evaluate_graph`` returns one value per
prompt) but reports only point estimates: ``evaluate_area_under_curve`` takes the mean
over all prompts at each circuit size and gives the areas without intervals. Its mean
over prompts equals edgewise's mean of batch means (which this module resamples) when
the batches are of one size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from edgewise.checks import require_int
from edgewise.data import (
    PromptDataLoader,
    PromptDataset,
    PromptPairBatch,
    loader_batches,
)
from edgewise.data.checks import scoring_entry
from edgewise.patching.model import PatchableModel
from edgewise.types import AblationType, CircuitOutputs, PruneScores

Method = Literal["per-prompt", "rescore"]


# ------------------------------------------------------------------------- resampling
def _check_bootstrap_args(n_resamples: int, level: float, seed: int) -> tuple[int, float, int]:
    n_resamples = require_int(n_resamples, "n_resamples", 1)
    seed = require_int(seed, "seed")
    if isinstance(level, bool) or not isinstance(level, int | float) or not 0.0 < level < 1.0:
        raise ValueError(f"level must be a fraction strictly between 0 and 1 (e.g. 0.95 for a "
                         f"95% interval), got {level!r}")  # fmt: skip
    return n_resamples, float(level), seed


def resample_indices(n_prompts: int, n_resamples: int, seed: int = 0) -> torch.Tensor:
    """Prompt indices of each resample, ``[n_resamples, n_prompts]`` int64, drawn
    uniformly with replacement from a CPU ``torch.Generator`` seeded with ``seed``."""
    n_prompts = require_int(n_prompts, "n_prompts", 1)
    n_resamples = require_int(n_resamples, "n_resamples", 1)
    gen = torch.Generator().manual_seed(require_int(seed, "seed"))
    return torch.randint(0, n_prompts, (n_resamples, n_prompts), generator=gen)


def resample_weights(
    indices: torch.Tensor, position_weights: torch.Tensor, n_prompts: int
) -> torch.Tensor:
    """``[n_resamples, n_prompts]`` float64: the weight each prompt gets in each resample,
    the sum of ``position_weights[j]`` over the positions ``j`` that drew it.

    Args:
        indices: ``[n_resamples, n]`` prompt indices (:func:`resample_indices`).
        position_weights: ``[n]``, the weight of each position of a resample.
        n_prompts: the number of distinct prompts.
    """
    w = position_weights.to(torch.float64).expand(indices.shape)
    return torch.zeros(indices.shape[0], n_prompts, dtype=torch.float64).scatter_add_(1, indices, w)


def percentile_interval(
    samples: torch.Tensor, level: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(1 - level)/2`` and ``(1 + level)/2`` quantiles over the first dimension of
    ``samples`` ``[n_resamples, ...]`` (float64, each ``[...]``), linearly interpolated
    between order statistics (NumPy's default). NaN samples propagate to the bounds."""
    if samples.ndim == 0 or samples.shape[0] == 0:
        raise ValueError(
            f"samples must be [n_resamples, ...] with n_resamples >= 1, got {tuple(samples.shape)}"
        )
    _, level, _ = _check_bootstrap_args(1, level, 0)
    ordered = samples.to(torch.float64).sort(dim=0).values
    n = ordered.shape[0]

    def quantile(q: float) -> torch.Tensor:
        pos = q * (n - 1)
        if abs(pos - round(pos)) < 1e-9:  # (1 - 0.9) / 2 is 0.04999...: land on the order statistic
            pos = float(round(pos))
        lo = min(int(pos), n - 1)
        hi = min(lo + 1, n - 1)
        frac = pos - lo
        return ordered[lo] + (ordered[hi] - ordered[lo]) * frac

    tail = (1.0 - level) / 2
    return quantile(tail), quantile(1.0 - tail)


def _rows(answers: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    return list(answers.unbind(0)) if isinstance(answers, torch.Tensor) else list(answers)


def _prompt_rows(batches: Sequence[PromptPairBatch]) -> dict[str, list[Any]]:
    """The loader's prompt pairs, one row each, in the order the batches yield them."""
    rows: dict[str, list[Any]] = {"clean": [], "corrupt": [], "answers": [], "wrong_answers": []}
    for b in batches:
        rows["clean"] += list(b.clean.unbind(0))
        rows["corrupt"] += list(b.corrupt.unbind(0))
        rows["answers"] += _rows(b.answers)
        rows["wrong_answers"] += _rows(b.wrong_answers)
    return rows


def _check_loader(dataloader: PromptDataLoader, who: str) -> list[PromptPairBatch]:
    if getattr(dataloader, "kv_cache", None) is not None:
        raise ValueError(f"{who}: the dataloader's prompts were cut after a cached prefix "
                         "(tail_divergence=True), which a resample cannot rebuild; load the "
                         "dataset with tail_divergence=False (the default)")  # fmt: skip
    return loader_batches(dataloader, who)


@scoring_entry
def resampled_loader(
    dataloader: PromptDataLoader,
    indices: torch.Tensor,
    batches: Sequence[PromptPairBatch] | None = None,
) -> PromptDataLoader:
    """A loader of the prompt pairs ``indices`` ``[n]`` picks (indices into the pairs the
    loader yields, in order), batched as the original: batches of its first batch's size,
    the last one smaller if the original's was (``drop_last=False``, no shuffling)."""
    batches = (
        list(batches) if batches is not None else _check_loader(dataloader, "resampled_loader")
    )
    rows = _prompt_rows(batches)
    picked = {k: [v[int(i)] for i in indices] for k, v in rows.items()}
    ds = PromptDataset(picked["clean"], picked["corrupt"], picked["answers"], picked["wrong_answers"],
                       seq_labels=getattr(dataloader, "seq_labels", None),
                       word_idxs=getattr(dataloader, "word_idxs", None))  # fmt: skip
    return PromptDataLoader(ds, seq_len=getattr(dataloader, "seq_len", None),
                            batch_size=batches[0].clean.shape[0], drop_last=False,
                            name="a bootstrap resample")  # fmt: skip


def _batch_sizes_ok(sizes: list[int]) -> None:
    """A resample is rebatched as ``[B, ..., B, rest]``: the original must be batched so."""
    if any(s != sizes[0] for s in sizes[:-1]) or sizes[-1] > sizes[0]:
        raise ValueError(f"the dataloader's batches have sizes {sizes}; a bootstrap keeps the "
                         "batching and needs every batch but the last of one size (a "
                         "PromptDataLoader without a custom sampler gives that)")  # fmt: skip


def _mean_weights(sizes: list[int]) -> torch.Tensor:
    """``[n]``: ``1 / |batch|`` at each position, so a weighted sum is a sum of batch means."""
    return torch.cat([torch.full((s,), 1.0 / s, dtype=torch.float64) for s in sizes])


# ------------------------------------------------------------------------- scores
@dataclass(frozen=True)
class ScoreIntervals:
    """Per-edge bootstrap intervals of an algorithm's (signed) scores.

    Attributes:
        point: the scores of the data itself; with ``method="per-prompt"`` the weighted sum
            of the per-prompt scores (the algorithm's own scores up to float rounding).
        lower / upper: the interval bounds, shaped like the scores (``{dest module: mask
            shape}``), float64 on the CPU.
        level: the interval's level (0.95: the 2.5% and 97.5% percentiles).
        n_resamples, seed: the resamples (:func:`resample_indices`).
        method: ``"per-prompt"`` or ``"rescore"`` (see the module's docstring).
        indices: ``[n_resamples, n_prompts]`` prompt indices of every resample.
        samples: ``[n_resamples, n_edges]`` float64, every resample's scores, destination
            modules in graph order (``flat_prune_scores``' order); ``None`` unless
            ``keep_samples``.
    """

    point: PruneScores
    lower: PruneScores
    upper: PruneScores
    level: float
    n_resamples: int
    seed: int
    method: Method
    indices: torch.Tensor
    samples: torch.Tensor | None = None


def _unflatten(model: PatchableModel, flat: torch.Tensor) -> PruneScores:
    out, lo = {}, 0
    for name, mod in model.dest_modules.items():
        n = 1
        for d in mod.mask_shape:
            n *= d
        out[name] = flat[lo : lo + n].reshape(mod.mask_shape).clone()
        lo += n
    return out


def _per_prompt_exact(algorithm: Any, params: dict[str, Any]) -> bool:
    """Whether the algorithm's score is a sum over batches of a batch-mean of per-prompt
    terms that depend on their own prompt pair only."""
    from edgewise.prune_algos.mask_gradient import mask_gradient_prune_scores

    if algorithm.function is not mask_gradient_prune_scores:
        return False
    ablation = AblationType(params.get("ablation_type", AblationType.RESAMPLE))
    return not (ablation.mean_over_batch or ablation.mean_over_dataset)


@scoring_entry
def bootstrap_scores(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    algorithm: str,
    n_resamples: int = 100,
    level: float = 0.95,
    seed: int = 0,
    official_edges: Any = None,
    method: Method | None = None,
    keep_samples: bool = False,
    **params: Any,
) -> ScoreIntervals:
    """Bootstrap intervals of each edge's score under ``algorithm``.

    Args:
        model: the :class:`~edgewise.patching.model.PatchableModel`.
        dataloader: the prompts the algorithm scores (all its batches are resampled).
        algorithm: a name in :data:`edgewise.prune_algos.ALGORITHMS` (its defaults apply,
            ``params`` override them).
        n_resamples: the number of resamples ``N``.
        level: the interval's level, strictly between 0 and 1 (default 95%).
        seed: the resamples' seed (same seed, same intervals).
        official_edges: passed to the algorithm (needed by ``ground-truth`` only).
        method: ``"per-prompt"`` (exact and cheap; mask-gradient algorithms with an
            ablation of one prompt pair only) or ``"rescore"`` (any algorithm, ``N`` runs).
            Default: ``"per-prompt"`` where it is exact, else ``"rescore"``.
        keep_samples: keep every resample's scores (``[N, n_edges]`` float64) in the result.
        **params: the algorithm's parameters (e.g. ``grad_function``, ``progress``).

    Returns:
        A :class:`ScoreIntervals` with ``point``, ``lower`` and ``upper`` scores shaped
        like the model's masks.
    """
    from edgewise.evaluation.circuits import flat_prune_scores
    from edgewise.prune_algos import ALGORITHMS

    n_resamples, level, seed = _check_bootstrap_args(n_resamples, level, seed)
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    algo = ALGORITHMS[algorithm]
    exact = _per_prompt_exact(algo, {**algo.defaults, **params})
    method = method or ("per-prompt" if exact else "rescore")
    if method == "per-prompt" and not exact:
        raise ValueError(f"method='per-prompt' is exact only for the mask-gradient algorithms (eap, "
                         f"ig, ig-layer) with an ablation of one prompt pair (resample, zero); "
                         f"use method='rescore' for {algorithm!r} with these parameters")  # fmt: skip
    if method not in ("per-prompt", "rescore"):
        raise ValueError(f"method must be 'per-prompt' or 'rescore', got {method!r}")
    batches = _check_loader(dataloader, "bootstrap_scores")
    sizes = [b.clean.shape[0] for b in batches]
    _batch_sizes_ok(sizes)
    n = sum(sizes)
    indices = resample_indices(n, n_resamples, seed)

    def score(loader: PromptDataLoader) -> torch.Tensor:
        scores = algo(model, loader, official_edges, **params)
        return flat_prune_scores(scores, model).to(torch.float64)

    if method == "per-prompt":
        per_prompt = torch.stack([score(resampled_loader(dataloader, torch.tensor([i]), batches))
                                  for i in range(n)])  # [n, n_edges]  # fmt: skip
        pos_w = _mean_weights(sizes)
        if algo.score_scale(params) == "mean":  # MIB's scale: the sum divided by the prompts
            pos_w = pos_w / n
        point = pos_w @ per_prompt
        samples = resample_weights(indices, pos_w, n) @ per_prompt  # [N, n_edges]
    else:
        point = score(dataloader)
        samples = torch.stack(
            [score(resampled_loader(dataloader, idx, batches)) for idx in indices]
        )
    lower, upper = percentile_interval(samples, level)
    return ScoreIntervals(
        point=_unflatten(model, point), lower=_unflatten(model, lower), upper=_unflatten(model, upper),
        level=level, n_resamples=n_resamples, seed=seed, method=method, indices=indices,
        samples=samples if keep_samples else None,
    )  # fmt: skip


# ------------------------------------------------------------------------- faithfulness
@scoring_entry
def per_prompt_metric(
    model: Any,
    dataloader: PromptDataLoader,
    circuit_outs: CircuitOutputs,
    metric: str = "logit_diff",
) -> tuple[list[int], torch.Tensor]:
    """Each prompt's metric under each circuit: ``(sizes, values [n_prompts, n_sizes])``
    float64, prompts in the loader's order, sizes ascending.

    ``metric="mse"``: minus the prompt's mean squared error against its real-valued
    answers; anything else: its answer (logit) difference, averaged over output
    positions. The batch-weighted means of these columns are
    :func:`edgewise.evaluation.pipeline.measure_task_metric`'s measurements. ``model`` is
    not read (it is there for the signature of the ``measure_*`` functions)."""
    from edgewise.metrics.answers import batch_answer_diffs

    batches = loader_batches(dataloader, "per_prompt_metric")
    sizes = sorted(circuit_outs)
    cols = []
    for size in sizes:
        per = circuit_outs[size]
        missing = [b.key for b in batches if b.key not in per]
        if missing:
            raise ValueError(f"circuit_outs of size {size} have no output for batch {missing[0]} of "
                             "the dataloader: were they computed by run_circuits on this dataloader?")  # fmt: skip
        vals = []
        for b in batches:
            out = per[b.key]
            if metric == "mse":
                v = -((out.double() - b.answers.to(out.device).double()) ** 2)  # type: ignore[union-attr]
            else:
                v = batch_answer_diffs(out, b).double()
            vals.append(v.reshape(v.shape[0], -1).mean(dim=1).cpu())
        cols.append(torch.cat(vals))
    return sizes, torch.stack(cols, dim=1)


@dataclass(frozen=True)
class FaithfulnessIntervals:
    """Bootstrap intervals of the faithfulness curve and of CPR and CMD.

    Attributes:
        sizes: circuit sizes, ascending.
        faithfulness / lower / upper: the curve of the data itself and its bounds, one
            value per size.
        cpr / cmd: ``(point, lower, upper)``.
        level, n_resamples, seed: as in :class:`ScoreIntervals`.
        samples: ``[n_resamples, n_sizes]`` float64, every resample's faithfulness curve.
    """

    sizes: list[int]
    faithfulness: list[float]
    lower: list[float]
    upper: list[float]
    cpr: tuple[float, float, float]
    cmd: tuple[float, float, float]
    level: float
    n_resamples: int
    seed: int
    samples: torch.Tensor

    def to_json(self) -> dict[str, Any]:
        """What ``results.json`` keeps under ``"bootstrap"``: ``faithfulness`` as
        ``[size, lower, upper]`` rows, ``cpr`` and ``cmd`` as ``[lower, upper]``."""
        return {"n_resamples": self.n_resamples, "level": self.level, "seed": self.seed,
                "faithfulness": [[s, lo, hi] for s, lo, hi in zip(self.sizes, self.lower, self.upper)],
                "cpr": list(self.cpr[1:]), "cmd": list(self.cmd[1:])}  # fmt: skip


@scoring_entry
def bootstrap_faithfulness(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    circuit_outs: CircuitOutputs,
    metric: str = "logit_diff",
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> FaithfulnessIntervals:
    """Bootstrap intervals of the faithfulness curve, CPR and CMD of ``circuit_outs``.

    Every resample's measurement of a circuit is its prompts' metric averaged as
    :func:`~edgewise.evaluation.pipeline.measure_task_metric` averages (the mean of the
    batches' means for logit differences, the mean over prompts for MSE); its
    faithfulness curve and CPR/CMD come from
    :func:`~edgewise.metrics.faithfulness.faithfulness_curve` and
    :func:`~edgewise.metrics.faithfulness.cpr_cmd`, with the empty and full circuits of
    that resample. Measure sizes 0 and ``n_edges`` (as ``edgewise discover`` does).

    Args:
        model: the patchable model the outputs came from.
        dataloader: the loader ``run_circuits`` ran (every batch is needed).
        circuit_outs: ``run_circuits``' outputs, ``size -> batch key -> [batch, (seq,) vocab]``.
        metric: ``"logit_diff"`` or ``"mse"`` (a task's ``metric``).
        n_resamples / level / seed: see :func:`bootstrap_scores`.

    Raises:
        ValueError: a resample whose full and empty circuits score the same (its
            faithfulness is undefined), naming the resample.
    """
    from edgewise.metrics.faithfulness import cpr_cmd, faithfulness_curve

    n_resamples, level, seed = _check_bootstrap_args(n_resamples, level, seed)
    if len(circuit_outs) < 2:
        raise ValueError(
            "bootstrap_faithfulness needs circuits of at least two sizes (0 and n_edges)"
        )
    batches = _check_loader(dataloader, "bootstrap_faithfulness")
    sizes, values = per_prompt_metric(model, dataloader, circuit_outs, metric)
    counts = [b.clean.shape[0] for b in batches]
    n = sum(counts)
    pos_w = (
        torch.full((n,), 1.0 / n, dtype=torch.float64)
        if metric == "mse"
        else _mean_weights(counts) / len(counts)
    )
    indices = resample_indices(n, n_resamples, seed)
    measured = torch.cat([(pos_w @ values)[None], resample_weights(indices, pos_w, n) @ values])
    curves, areas = [], []
    for r, row in enumerate(measured.tolist()):
        points = list(zip(sizes, row))
        try:
            curves.append([f for _, f in faithfulness_curve(points)])
            areas.append(cpr_cmd(points))
        except ValueError as e:
            which = "the data itself" if r == 0 else f"resample {r - 1} (seed {seed})"
            raise ValueError(f"bootstrap_faithfulness: for {which}, {e}") from None
    curve_t, area_t = (
        torch.tensor(curves, dtype=torch.float64),
        torch.tensor(areas, dtype=torch.float64),
    )
    lo, hi = percentile_interval(curve_t[1:], level)
    a_lo, a_hi = percentile_interval(area_t[1:], level)
    return FaithfulnessIntervals(
        sizes=sizes, faithfulness=curves[0], lower=lo.tolist(), upper=hi.tolist(),
        cpr=(areas[0][0], float(a_lo[0]), float(a_hi[0])),
        cmd=(areas[0][1], float(a_lo[1]), float(a_hi[1])),
        level=level, n_resamples=n_resamples, seed=seed, samples=curve_t[1:],
    )  # fmt: skip


# ------------------------------------------------------------------------- results.json
def add_score_intervals(
    result: dict[str, Any], model: PatchableModel, intervals: ScoreIntervals
) -> dict[str, Any]:
    """Write ``intervals`` into an evaluation ``result`` (one algorithm's entry of
    ``results.json``): each record of ``result["top_edges"]`` gains ``"ci": [lower,
    upper]`` and ``result["bootstrap"]["scores"]`` says how they were computed. Returns
    ``result``."""
    for rec in result.get("top_edges") or []:
        e = model.edge(rec["edge"], rec["seq_idx"])
        name = e.dest.module_name
        rec["ci"] = [
            float(intervals.lower[name][e.patch_idx]),
            float(intervals.upper[name][e.patch_idx]),
        ]
    result.setdefault("bootstrap", {})["scores"] = {
        "n_resamples": intervals.n_resamples,
        "level": intervals.level,
        "seed": intervals.seed,
        "method": intervals.method,
    }
    return result
