"""CPR and CMD exactly as the MIB circuit track computes them.

What MIB does (read in ``hannamw/MIB-circuit-track``: ``MIB_circuit_track/evaluation.py``
``evaluate_area_under_curve``, ``run_evaluation.py``, ``print_results.py``; the graph and
the patched runs in ``hannamw/EAP-IG``: ``src/eap/graph.py`` ``apply_topn``/``prune``,
``src/eap/evaluate.py``; the leaderboard's evaluator ``mttk/MIB-circuit-track-autoeval``:
``eval_submissions.py``, ``MIB_circuit_track/evaluation.py``), in our words:

* **Sizes.** Ten fractions of the graph's edges, ``0.001, 0.002, 0.005, 0.01, 0.02, 0.05,
  0.1, 0.2, 0.5, 1`` (0.1% ... 100%); no point at 0. A fraction ``p`` becomes
  ``int(p * n_edges)`` edges: Python's float product, truncated (floor for these positive
  numbers), of the number of edges of the whole graph (``len(graph.edges)``, 32,491 for
  GPT-2 small).
* **Selection.** Plain top-n (``Graph.apply_topn``), not greedy (MIB's greedy variant is
  used only for one method, information-flow routes, and is not implemented here): the
  ``n`` edges of largest score, by the signed score (``absolute=False``) or by
  ``abs(score)`` (``absolute=True``). Exactly ``n`` edges are chosen; ties at the cut are
  broken by MIB's ``torch.argsort``, whose order for equal values is unspecified; here
  they are broken by the edge's position in MIB's score matrix (forward index, then
  backward index), which is also the graph's order. The chosen edges are then pruned
  (``Graph.prune``): nodes without an incoming edge (the input excepted) or without an
  outgoing edge are dropped with their edges, until nothing changes. What stays are the
  chosen edges that lie on a path from the input to the logits made of chosen edges. The
  size on the curve's x axis is still the requested fraction: pruned edges count towards
  the size (MIB records the pruned count separately as ``weighted_edge_counts``).
* **CPR and CMD.** MIB's evaluation takes ``--absolute``; the leaderboard runs both and
  takes CPR from the signed run (``absolute=False``) and CMD from the absolute one
  (``absolute=True``); ``print_results.py`` prefers the same pairing.
* **Runs.** Interchange ablation (MIB's default ``patching``; the leaderboard evaluates
  only that): the clean prompt runs, and every edge outside the circuit carries the
  difference between the source's output on the corrupted prompt and its output in this
  run, added at the destination's input (the same equation as edgewise's tree patching
  with resample ablation; MIB's ``run_evaluation.py`` takes ``--ablation`` but does not
  pass it on, so its evaluation is always this one). The full model is the clean model (``evaluate_baseline``); the
  empty circuit is ``apply_topn(0)``: every edge ablated, i.e. the corrupted run as far as
  the logits see it.
* **Faithfulness.** The metric is the logit difference (answer minus wrong answer) at the
  last position, per prompt; each circuit's value is the mean over all prompts (not a mean
  of batch means), and faithfulness is ``(mean m(C) - mean m(empty)) / (mean m(full) -
  mean m(empty))``: averaged, then divided.
* **Area.** Trapezoids over ``x`` = the fractions themselves (0.001 ... 1: linear, not
  log, and not rescaled; the total width is 0.999, so a perfect curve has CPR 0.999):
  CPR is the area under faithfulness, CMD the area under ``|1 - faithfulness|``. MIB also
  reports the plain average of the ten faithfulnesses. (The evaluator's script entry point
  passes ``log_scale=True``, but the function the leaderboard calls and its
  ``eval_results/print_scores.py`` use the linear fractions.)
* **Circuit submissions.** A submission of 9 circuits instead of scores is evaluated as
  given (each pruned), sorted by edge count, with the full model appended as faithfulness
  1.0; the 10 values take the same ten fractions as ``x``, whatever the circuits' sizes.

Optimal ablation: MIB scores with it (``run_attribution.py --ablation optimal``) but
evaluates every circuit with interchange ablation whatever ``--ablation`` says (above).
``ablation_values=`` here (``edgewise mib evaluate --ablation optimal``) evaluates with
the constants instead, an option MIB's scripts do not offer.

Deviations: metric values are averaged in float64 (MIB averages in the model's dtype);
with several answers per prompt edgewise takes
the mean over the answers (MIB's tasks have one answer and one wrong answer).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from edgewise.checks import cli_int
from edgewise.data import PromptDataLoader, loader_batches
from edgewise.data.checks import scoring_entry
from edgewise.evaluation.circuits import _check_scores, run_circuits
from edgewise.metrics.answers import batch_answer_diffs, last_position
from edgewise.metrics.faithfulness import area_under_curve
from edgewise.patching.model import PatchableModel
from edgewise.prune_algos.optimal_ablation import add_optimal_ablation_arguments
from edgewise.runtime.memory import MaxMemory, memory_arg
from edgewise.types import CircuitOutputs, Edge, PruneScores

Measure = Callable[
    [PatchableModel, PromptDataLoader, Sequence[set[Edge]]], tuple[list[float], float, float]
]
"""``(model, dataloader, circuits) -> (values, empty, full)``: see :func:`measure_circuits`."""

MIB_PERCENTAGES: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""The fractions of edges at which MIB measures faithfulness (and the x of its areas)."""


def mib_circuit_sizes(n_edges: int) -> list[int]:
    """The edge count of each of MIB's ten circuits: ``int(p * n_edges)`` for each ``p``
    in :data:`MIB_PERCENTAGES` (``[32, 64, 162, 324, 649, 1624, 3249, 6498, 16245, 32491]``
    for GPT-2 small's 32,491 edges)."""
    if isinstance(n_edges, bool) or not isinstance(n_edges, int) or n_edges < 1:
        raise ValueError(
            f"n_edges must be a positive int (the graph's edge count), got {n_edges!r}"
        )
    return [int(p * n_edges) for p in MIB_PERCENTAGES]


def mib_flat_order(model: PatchableModel) -> torch.Tensor:
    """Each edge's position in MIB's flattened ``[n_forward, n_backward]`` score matrix,
    ``[n_edges]`` int64 in ``model.edges`` order: ``src_idx * n_dests + dest_idx`` (edgewise
    numbers sources and destinations as MIB's forward and backward indices do)."""
    _check_mib_graph(model)
    n_dests = len(model.dests)
    return torch.tensor(
        [e.src.src_idx * n_dests + e.dest.dest_idx for e in model.edges], dtype=torch.long
    )


def _check_mib_graph(model: PatchableModel) -> None:
    from edgewise.io.files import _check_mib_compatible

    _check_mib_compatible(model)


def _edge_scores(model: PatchableModel, prune_scores: PruneScores) -> torch.Tensor:
    """Scores ``[n_edges]`` float64 in ``model.edges`` order."""
    _check_scores(model, prune_scores)
    flat = {n: t.detach().to("cpu", torch.float64) for n, t in prune_scores.items()}
    return torch.tensor(
        [float(flat[e.dest.module_name][e.patch_idx]) for e in model.edges], dtype=torch.float64
    )


def mib_topn(model: PatchableModel, prune_scores: PruneScores, n: int, absolute: bool) -> set[Edge]:
    """MIB's ``apply_topn`` before pruning: exactly ``n`` edges of largest score (signed, or
    ``abs`` with ``absolute``); ties at the cut go to the edge earlier in MIB's matrix
    order (MIB leaves that order unspecified)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= model.n_edges:
        raise ValueError(
            f"n must be an int within 0..{model.n_edges} (the graph's edges), got {n!r}"
        )
    scores = _edge_scores(model, prune_scores)
    if absolute:
        scores = scores.abs()
    # a stable descending sort of the edges taken in MIB's matrix order
    by_position = torch.argsort(mib_flat_order(model), stable=True)
    ranked = by_position[torch.argsort(scores[by_position], descending=True, stable=True)]
    return {model.edges[i] for i in ranked[:n].tolist()}


def mib_prune(model: PatchableModel, edges: set[Edge] | Sequence[Edge]) -> set[Edge]:
    """MIB's ``Graph.prune`` on a set of edges: the edges on some path from the input
    (``Resid Start``) to the logits (``Resid End``) made only of edges in the set. This is
    the fixed point of MIB's loop, which drops nodes that lack an incoming edge (the input
    excepted) or an outgoing one, then edges whose source or destination node was dropped
    (a head's node counts its Q, K and V inputs together)."""
    _check_mib_graph(model)
    chosen = set(edges)
    unknown = chosen - set(model.edges)
    if unknown:
        raise ValueError(f"edges not in the model's graph: {sorted(map(repr, unknown))[:3]}")

    # the source node a destination belongs to: (kind, block, head); logits: None
    def owner(e: Edge) -> tuple[str, int, int | None] | None:
        d = e.dest
        return None if d.kind == "resid" else (d.kind, d.block, d.head_idx)

    def node(e: Edge) -> tuple[str, int | None, int | None]:
        s = e.src
        return (s.kind, s.block, s.head_idx)

    order = sorted(chosen, key=lambda e: (e.src.src_idx, e.dest.dest_idx))
    reached = {("embed", None, None)}  # nodes reachable from the input through chosen edges
    for e in order:  # sources in topological order: a node's inputs come before its outputs
        if node(e) in reached and owner(e) is not None:
            reached.add(owner(e))  # type: ignore[arg-type]
    reaches_logits: set[Any] = {None}  # nodes that reach the logits through chosen edges
    for e in reversed(order):
        if owner(e) in reaches_logits:
            reaches_logits.add(node(e))
    return {e for e in chosen if node(e) in reached and owner(e) in reaches_logits}


def mib_circuit(
    model: PatchableModel, prune_scores: PruneScores, n: int, absolute: bool
) -> set[Edge]:
    """The circuit MIB evaluates for ``n`` requested edges: :func:`mib_topn`, then
    :func:`mib_prune` (at most ``n`` edges)."""
    return mib_prune(model, mib_topn(model, prune_scores, n, absolute))


def mib_area(faithfulnesses: Sequence[float]) -> tuple[float, float]:
    """``(CPR, CMD)`` of ten faithfulnesses at :data:`MIB_PERCENTAGES`: trapezoids over the
    fractions themselves (linear, not rescaled: total width 0.999), under ``f`` and under
    ``|1 - f|``."""
    ys = [float(f) for f in faithfulnesses]
    if len(ys) != len(MIB_PERCENTAGES):
        raise ValueError(
            f"MIB's areas need {len(MIB_PERCENTAGES)} faithfulnesses (one per size "
            f"{MIB_PERCENTAGES}), got {len(ys)}"
        )
    if not all(math.isfinite(y) for y in ys):
        raise ValueError(f"faithfulnesses must be finite, got {ys}")
    xs = list(MIB_PERCENTAGES)  # area_under_curve divides by xs[-1] = 1.0: no rescaling
    return area_under_curve(xs, ys), area_under_curve(xs, [abs(1.0 - y) for y in ys])


def mib_faithfulness(value: float, empty: float, full: float) -> float:
    """``(value - empty) / (full - empty)``; raises when the full model and the empty
    circuit score the same (faithfulness undefined)."""
    if full == empty:
        raise ValueError(
            f"the full model and the empty circuit have the same mean logit difference "
            f"({full}): faithfulness is undefined; use prompts whose corruption changes "
            "the answer"
        )
    return (value - empty) / (full - empty)


@scoring_entry
def prompt_logit_diffs(
    model: PatchableModel, dataloader: PromptDataLoader, circuit_outs: CircuitOutputs
) -> dict[int, torch.Tensor]:
    """Circuit size -> each prompt's logit difference (mean answer logit minus mean
    wrong-answer logit) at the last output position, ``[n_prompts]`` float64 in the
    loader's order: what MIB's ``evaluate_graph`` returns per prompt."""
    batches = loader_batches(dataloader, "prompt_logit_diffs")
    return {
        size: torch.cat(
            [
                batch_answer_diffs(last_position(by_batch[b.key]).double(), b).flatten()
                for b in batches
            ]
        )
        for size, by_batch in circuit_outs.items()
    }


@scoring_entry
def mean_logit_diff(
    model: PatchableModel, dataloader: PromptDataLoader, circuit_outs: CircuitOutputs
) -> dict[int, float]:
    """Circuit size -> the mean over all prompts of the logit difference (mean answer logit
    minus mean wrong-answer logit) at the last output position, MIB's ``logit_diff``
    averaged as ``evaluate_graph(...).mean()`` does: every prompt weighs the same."""
    per_prompt = prompt_logit_diffs(model, dataloader, circuit_outs)
    return {size: vals.mean().item() for size, vals in per_prompt.items()}


def _nested(circuits: Sequence[set[Edge]]) -> bool:
    ordered = sorted(circuits, key=len)
    return all(a <= b for a, b in zip(ordered, ordered[1:]))


@scoring_entry
def measure_circuits_per_prompt(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    circuits: Sequence[set[Edge]],
    progress: bool = False,
    max_memory: MaxMemory = None,
    ablation_values: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Each prompt's logit difference under each circuit, the empty circuit and the full
    model (MIB's interchange ablation, tree patching, resample from the corrupt prompt;
    with ``ablation_values`` ``[n_srcs, 1, 1, d_model]``, ablated edges carry those
    constants instead, e.g. optimal ablation values). Nested circuits (top-n circuits
    always are) run in one :func:`run_circuits` call, each edge scored by how many
    circuits hold it; others run one call each. Prompts of different lengths (right
    padding) are each read at their own last token, as MIB does.

    Returns:
        ``(values, empty, full)``: ``values[i]`` ``[n_prompts]`` float64 belongs to
        ``circuits[i]``; ``empty`` and ``full`` are ``[n_prompts]`` float64.
    """
    chains = [list(circuits)] if _nested(circuits) else [[c] for c in circuits]
    by_size: dict[int, torch.Tensor] = {}
    values: dict[int, torch.Tensor] = {}
    for chain in chains:
        level = {n: torch.zeros(m.mask_shape) for n, m in model.dest_modules.items()}
        for c in chain:
            for e in c:
                level[e.dest.module_name][e.patch_idx] += 1.0
        sizes = sorted({len(c) for c in chain} | ({0, model.n_edges} if not by_size else set()))
        outs = run_circuits(
            model, dataloader, sizes, level, progress=progress, max_memory=max_memory,
            ablation_values=ablation_values,
        )
        measured = prompt_logit_diffs(model, dataloader, outs)
        by_size.update(measured)
        for c in chain:
            values[id(c)] = measured[len(c)]
    return [values[id(c)] for c in circuits], by_size[0], by_size[model.n_edges]


@scoring_entry
def measure_circuits(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    circuits: Sequence[set[Edge]],
    progress: bool = False,
    max_memory: MaxMemory = None,
    ablation_values: torch.Tensor | None = None,
) -> tuple[list[float], float, float]:
    """The mean over all prompts of the logit difference of each circuit, of the empty
    circuit and of the full model: :func:`measure_circuits_per_prompt`, averaged.

    Returns:
        ``(values, empty, full)``: ``values[i]`` belongs to ``circuits[i]``.
    """
    values, empty, full = measure_circuits_per_prompt(
        model, dataloader, circuits, progress, max_memory, ablation_values
    )
    return [v.mean().item() for v in values], empty.mean().item(), full.mean().item()


@dataclass(frozen=True)
class MibResult:
    """MIB's evaluation of one set of scores (or circuits).

    Attributes:
        sizes: requested edge counts, one per fraction in :data:`MIB_PERCENTAGES`.
        edge_counts_cpr / edge_counts_cmd: edges left after pruning (MIB's
            ``weighted_edge_counts``) in the signed and the absolute run.
        curve_cpr / curve_cmd: faithfulness per size in the signed / absolute run.
        cpr: area under ``curve_cpr``; cmd: area under ``|1 - curve_cmd|``.
        average_cpr / average_cmd: plain means of the curves (MIB's ``average``).
        full / empty: the mean logit difference of the full model and the empty circuit.
    """

    sizes: list[int]
    edge_counts_cpr: list[int]
    edge_counts_cmd: list[int]
    curve_cpr: list[float]
    curve_cmd: list[float]
    cpr: float
    cmd: float
    full: float
    empty: float
    average_cpr: float = field(default=0.0)
    average_cmd: float = field(default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _result(
    sizes: list[int],
    circuits: tuple[list[set[Edge]], list[set[Edge]]],
    curves: tuple[list[float], list[float]],
    full: float,
    empty: float,
) -> MibResult:
    cpr, _ = mib_area(curves[0])
    _, cmd = mib_area(curves[1])
    return MibResult(
        sizes=sizes,
        edge_counts_cpr=[len(c) for c in circuits[0]],
        edge_counts_cmd=[len(c) for c in circuits[1]],
        curve_cpr=curves[0],
        curve_cmd=curves[1],
        cpr=cpr,
        cmd=cmd,
        full=full,
        empty=empty,
        average_cpr=sum(curves[0]) / len(curves[0]),
        average_cmd=sum(curves[1]) / len(curves[1]),
    )


@scoring_entry
def mib_evaluate(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    prune_scores: PruneScores,
    progress: bool = False,
    max_memory: MaxMemory = None,
    measure: Measure | None = None,
) -> MibResult:
    """CPR and CMD of importance scores as MIB's leaderboard computes them: circuits of
    :func:`mib_circuit_sizes` edges (top-n by signed score for CPR, by ``abs`` for CMD,
    each pruned by :func:`mib_prune`), interchange ablation, faithfulness of mean logit
    differences, trapezoids over the fractions (see the module docstring).

    Args:
        model: a patchable model with MIB's graph (``seq_len=None``, factorized,
            separate Q/K/V, MLPs).
        dataloader: prompt pairs with one answer and one wrong answer each.
        prune_scores: destination module -> scores shaped like its mask.
        measure: ``(model, dataloader, circuits) -> (values, empty, full)``, the mean
            metric of each circuit, of the empty circuit and of the full model; default
            :func:`measure_circuits` (MIB's interchange ablation and logit difference).

    Raises:
        ValueError: a graph MIB's format cannot express, scores that do not fit it or
            hold NaN, or a full model that scores the same as the empty circuit.
    """
    sizes = mib_circuit_sizes(model.n_edges)
    circuits = tuple(
        [mib_circuit(model, prune_scores, n, absolute) for n in sizes] for absolute in (False, True)
    )
    if measure is None:
        measure = partial(measure_circuits, progress=progress, max_memory=max_memory)
    vals_cpr, empty, full = measure(model, dataloader, circuits[0])
    vals_cmd, _, _ = measure(model, dataloader, circuits[1])
    curves = (
        [mib_faithfulness(v, empty, full) for v in vals_cpr],
        [mib_faithfulness(v, empty, full) for v in vals_cmd],
    )
    return _result(sizes, circuits, curves, full, empty)  # type: ignore[arg-type]


@scoring_entry
def mib_evaluate_circuits(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    circuits: Sequence[set[Edge]],
    progress: bool = False,
    max_memory: MaxMemory = None,
    measure: Measure | None = None,
) -> MibResult:
    """MIB's evaluation of a submission of 9 circuits: each pruned, sorted by edge count,
    the full model appended with faithfulness 1.0, the ten values placed at
    :data:`MIB_PERCENTAGES` whatever the circuits' sizes. CPR and CMD come from the same
    curve (the ``absolute`` flag does not change given circuits)."""
    n_files = len(MIB_PERCENTAGES) - 1
    if len(circuits) != n_files:
        raise ValueError(f"a circuit submission has {n_files} circuits, got {len(circuits)}")
    pruned = sorted((mib_prune(model, c) for c in circuits), key=len)
    if measure is None:
        measure = partial(measure_circuits, progress=progress, max_memory=max_memory)
    vals, empty, full = measure(model, dataloader, pruned)
    curve = [mib_faithfulness(v, empty, full) for v in vals] + [1.0]
    sizes = mib_circuit_sizes(model.n_edges)
    counts = [len(c) for c in pruned] + [model.n_edges]
    cpr, cmd = mib_area(curve)
    return MibResult(
        sizes=sizes,
        edge_counts_cpr=counts,
        edge_counts_cmd=counts,
        curve_cpr=curve,
        curve_cmd=curve,
        cpr=cpr,
        cmd=cmd,
        full=full,
        empty=empty,
        average_cpr=sum(curve) / len(curve),
        average_cmd=sum(curve) / len(curve),
    )


# ------------------------------------------------------------------- the command line
def load_mib_setup(
    model_name: str, task_name: str, batch_size: int, kind: str | None = None,
    device: str | None = "cpu", dtype: str | None = None,
) -> tuple[PatchableModel, PromptDataLoader]:
    """The patchable model with MIB's graph (no token positions; with grouped-query
    attention one K/V input per query head, as MIB ungroups them, on a ``HookedTransformer``
    and a ``TransformerBridge`` alike) of ``kind`` on ``device`` in ``dtype``
    (:func:`edgewise.runtime.resolve.load_model`) and the task's test prompts (their
    batches on ``device``), for ``edgewise mib ...`` commands."""
    from edgewise.benchmarks.tasks import check_model_name, get_task, load_model
    from edgewise.patching.wrap import patchable_model
    from edgewise.runtime.resolve import on_device, resolve_device, resolve_dtype

    task = get_task(task_name)
    check_model_name(model_name or task.model)  # a bad name or folder: before loading
    device = resolve_device(device)  # a missing GPU: before loading
    model = load_model(model_name or task.model, device=device, kind=kind,
                       dtype=resolve_dtype(dtype))  # fmt: skip
    test = on_device(task.dataloaders(model, batch_size)[1], device)
    cfg = model.cfg
    grouped = getattr(cfg, "n_key_value_heads", None) not in (None, cfg.n_heads)
    pm = patchable_model(model, slice_output=task.slice_output, seq_len=None,  # type: ignore[arg-type]
                         ungroup_kv=True if grouped else None)  # fmt: skip
    return pm, test


def load_scores_file(path: str | Path, model: PatchableModel) -> PruneScores:
    """Scores from a MIB graph JSON (``.json``) or an edgewise scores file (anything
    else), checked against ``model``'s graph."""
    from edgewise.io.files import load_mib_json, load_prune_scores

    path = Path(path)
    if path.suffix == ".json":
        return load_mib_json(path, model)[0]
    scores, meta = load_prune_scores(path)
    if meta.get("seq_len") is not None:
        raise ValueError(
            f"{path} holds scores per token position (seq_len={meta['seq_len']}); MIB's "
            "graph has none: score again without them (edgewise discover ... --no-positions, "
            "which also writes circuit_<algo>_mib.json) and use that scores file"
        )
    return load_prune_scores(path, model)[0]


def format_result(result: MibResult) -> str:
    """The lines ``edgewise mib evaluate`` prints: CPR, CMD and the two curves."""
    lines = [
        f"CPR {result.cpr:.6f}",
        f"CMD {result.cmd:.6f}",
        f"{'percent':>8} {'edges':>8} {'kept':>8} {'faith(signed)':>14} {'kept':>8} {'faith(abs)':>11}",
    ]
    for i, p in enumerate(MIB_PERCENTAGES):
        lines.append(
            f"{p * 100:>8g} {result.sizes[i]:>8} {result.edge_counts_cpr[i]:>8} "
            f"{result.curve_cpr[i]:>14.6f} {result.edge_counts_cmd[i]:>8} {result.curve_cmd[i]:>11.6f}"
        )
    return "\n".join(lines)


def run_evaluate(args: argparse.Namespace) -> MibResult:
    """``edgewise mib evaluate``: print CPR and CMD of a scores file as MIB computes them
    (with ``--ablation optimal``, ablated edges carry optimal ablation values fitted on
    the task's train prompts)."""
    if args.ablation == "optimal" and (args.oa_steps < 0 or not args.oa_lr > 0):
        raise ValueError(f"--oa-steps must be >= 0 and --oa-lr positive, got {args.oa_steps} "
                         f"and {args.oa_lr}")  # fmt: skip
    pm, test = load_mib_setup(args.model, args.task, args.batch_size, args.kind, args.device,
                              args.dtype)  # fmt: skip
    scores = load_scores_file(args.scores_file, pm)
    measure = None
    if args.ablation == "optimal":
        from edgewise.benchmarks.tasks import get_task
        from edgewise.prune_algos.optimal_ablation import optimal_ablation_values

        task = get_task(args.task)
        from edgewise.runtime.resolve import on_device

        train = on_device(task.dataloaders(pm.wrapped_model, args.batch_size)[0], pm.device)
        values = optimal_ablation_values(pm, train, args.oa_steps, args.oa_lr, args.oa_objective,
                                         task.grad_function, task.answer_function)  # fmt: skip
        measure = partial(measure_circuits, progress=not args.quiet, max_memory=args.max_memory,
                          ablation_values=values)  # fmt: skip
    result = mib_evaluate(pm, test, scores, progress=not args.quiet, max_memory=args.max_memory,
                          measure=measure)  # fmt: skip
    print(format_result(result))
    return result


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``edgewise mib evaluate``."""
    p = sub.add_parser(
        "evaluate", help="CPR and CMD of a scores file, exactly as MIB computes them"
    )
    p.add_argument("scores_file", help="a MIB graph JSON (.json) or an edgewise scores file")
    p.add_argument("--model", default=None, help="the model (default: the task's): a shipped "
                   "model, a local Hugging Face folder, a TransformerLens or hub name")
    p.add_argument("--task", required=True, help="a task name or a dataset JSON file")
    p.add_argument("--batch-size", type=cli_int(1), default=16)
    p.add_argument("--max-memory", metavar="SIZE", default=None, type=memory_arg)
    add_optimal_ablation_arguments(
        p, "what edges outside a circuit carry: the corrupt prompt's activations (patching: "
           "MIB's evaluation, whatever its --ablation) or optimal ablation constants fitted on "
           "the task's train prompts")
    from edgewise.runtime.resolve import add_device_arguments

    add_device_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(mib_run=run_evaluate)
