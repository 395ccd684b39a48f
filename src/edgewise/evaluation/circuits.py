"""Circuits from scores, and the model's output with only a circuit intact.

A circuit of size ``k`` is the ``k`` edges of largest importance ``abs(score)``. Edges
of equal importance enter together, so a requested size may resolve to a larger actual
one; results are keyed by the actual size.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from enum import Enum

import torch
from tqdm.auto import tqdm

from edgewise.checks import require_int
from edgewise.data import (
    PromptDataLoader,
    PromptPairBatch,
    check_batches_for_model,
    loader_batches,
    refuse_padded_means,
    require_full_prompts,
)
from edgewise.data.checks import scoring_entry
from edgewise.patching.model import PatchableModel
from edgewise.runtime.ablation import (
    CleanCorrupt,
    batch_ablation,
    check_ablation_values,
    src_ablations,
)
from edgewise.runtime.distributed import gather_objects, my_share, rank_and_world
from edgewise.runtime.memory import (
    MaxMemory,
    human,
    is_out_of_memory,
    parse_memory,
    plan_passes,
    sub_batch,
)
from edgewise.types import AblationType, CircuitOutputs, Edge, PatchType, PruneScores


class EdgeCounts(Enum):
    """Default lists of circuit sizes for :func:`edge_counts_util`."""

    ALL = "all"  # every size 0..n_edges
    LOGARITHMIC = "logarithmic"  # 1..9, 10..90 step 10, 100..900 step 100, ... (auto-circuit's)
    LOGARITHMIC_DENSE = "logarithmic_dense"  # 1..99, 100..990 step 10, 1000..9900 step 100, ...
    GROUPS = "groups"  # one size per group of tied scores


TestEdges = EdgeCounts | Sequence[int | float]


def flat_prune_scores(prune_scores: PruneScores, model: PatchableModel | None = None) -> torch.Tensor:
    """All scores in one 1-D tensor, destination modules in graph order (or in
    ``prune_scores`` order when ``model`` is None). The dtype is the scores' own (the
    widest of them, at least float32): rounding float64 scores would move circuit
    thresholds off the scores they are compared with."""
    names = list(model.dest_modules) if model is not None else list(prune_scores)
    dtype = torch.float32
    for n in names:
        dtype = torch.promote_types(dtype, prune_scores[n].dtype)
    return torch.cat([prune_scores[n].detach().flatten().to("cpu", dtype) for n in names])


def _check_scores(model: PatchableModel, prune_scores: PruneScores) -> None:
    """Raise a ``ValueError`` unless ``prune_scores`` has a tensor of the right shape for
    every destination module and no NaN (a NaN is never ``>=`` a threshold, so its edge
    would silently leave every circuit); the message names the edges with NaN."""
    for name, mod in model.dest_modules.items():
        if name not in prune_scores:
            raise ValueError(f"prune_scores has no entry for destination module {name}")
        if not isinstance(prune_scores[name], torch.Tensor):
            raise TypeError(f"prune_scores[{name!r}] must be a tensor, got {type(prune_scores[name]).__name__}")
        if tuple(prune_scores[name].shape) != mod.mask_shape:
            raise ValueError(
                f"prune_scores[{name!r}] has shape {tuple(prune_scores[name].shape)}, the graph "
                f"expects {mod.mask_shape}: were the scores made for another model or seq_len?"
            )
    nan = {name: torch.isnan(prune_scores[name]) for name in model.dest_modules}
    counts = {name: int(m.sum()) for name, m in nan.items() if bool(m.any())}
    if counts:
        edges = [e for e in model.edges if bool(nan[e.dest.module_name][e.patch_idx])]
        shown = ", ".join(repr(e) for e in edges[:5]) + (", ..." if len(edges) > 5 else "")
        modules = ", ".join(f"{n} ({c})" for n, c in counts.items())
        raise ValueError(
            f"prune_scores hold NaN for {sum(counts.values())} edge(s): {shown}, in {modules}. "
            "A NaN cannot be ranked, so those edges would silently leave every circuit. NaN "
            "scores come from a NaN in the model or its inputs: fix it and score again (or, "
            "to rank them last on purpose, torch.nan_to_num(score, nan=0.0))."
        )


def edge_counts_util(
    edges: Sequence[Edge] | int,
    test_counts: TestEdges | None = None,
    prune_scores: PruneScores | None = None,
    zero_edges: bool | None = None,
    all_edges: bool | None = None,
    true_edge_count: int | None = None,
) -> list[int]:
    """The circuit sizes to evaluate.

    Args:
        edges: the graph's edges (or their number).
        test_counts: an :class:`EdgeCounts`, or a list of sizes (ints) and fractions of
            all edges (floats). Default, as in auto-circuit: ``GROUPS`` when the scores
            have fewer distinct values than ``min(n_edges / 2, 100)`` (as ACDC's do), else
            ``LOGARITHMIC`` above 200 edges (41 sizes for GPT-2 small's 32,491) and
            ``ALL`` below.
        prune_scores: needed for ``GROUPS``.
        zero_edges / all_edges: include (True) or leave out (False) 0 and ``n_edges``;
            default, as in auto-circuit: include them when more than two sizes result,
            else leave them out.
        true_edge_count: a size added to the list (the official circuit's size).

    Returns:
        Sorted, distinct sizes.
    """
    n_edges = edges if isinstance(edges, int) else len(edges)
    flat = None
    if prune_scores is not None:
        flat = flat_prune_scores(prune_scores).float().abs()
        if bool(torch.isnan(flat).any()):
            bad = [n for n, t in prune_scores.items() if bool(torch.isnan(t).any())]
            raise ValueError(
                f"prune_scores hold NaN in {bad}: a NaN cannot be ranked; fix the model or "
                "inputs that made it and score again (circuit_edges names the edges)"
            )
    if test_counts is None:
        if flat is not None and len(torch.unique(flat)) < min(n_edges / 2, 100):
            test_counts = EdgeCounts.GROUPS
        else:
            test_counts = EdgeCounts.LOGARITHMIC if n_edges > 200 else EdgeCounts.ALL
    if test_counts == EdgeCounts.ALL:
        counts = list(range(n_edges + 1))
    elif test_counts == EdgeCounts.LOGARITHMIC:
        counts = [n for n in range(1, n_edges) if n % (10 ** math.floor(math.log10(n))) == 0]
    elif test_counts == EdgeCounts.LOGARITHMIC_DENSE:
        counts = [
            n for n in range(1, n_edges) if n % (10 ** max(math.floor(math.log10(n)) - 1, 0)) == 0
        ]
    elif test_counts == EdgeCounts.GROUPS:
        if flat is None:
            raise ValueError("EdgeCounts.GROUPS needs prune_scores")
        _, group_sizes = torch.unique(flat, sorted=True, return_counts=True)
        counts = torch.cumsum(group_sizes.flip(0), 0).tolist()
    elif isinstance(test_counts, Sequence):
        counts = []
        for n in test_counts:
            if isinstance(n, float):  # a fraction of all edges
                if not 0.0 <= n <= 1.0:
                    raise ValueError(f"fractional edge count {n} must be within [0, 1]")
                counts.append(int(n_edges * n))
            elif 0 <= n <= n_edges:
                counts.append(int(n))
            else:
                raise ValueError(f"edge count {n} is outside 0..{n_edges}")
    else:
        raise ValueError(f"unknown test_counts {test_counts!r}")
    several = len(counts) > 2
    for flag, n in ((zero_edges, 0), (all_edges, n_edges)):
        if flag if flag is not None else several:
            counts.append(n)
        else:
            counts = [c for c in counts if c != n]
    if true_edge_count is not None:
        counts.append(true_edge_count)
    return sorted(set(counts))


def desc_prune_scores(prune_scores: PruneScores) -> torch.Tensor:
    """Every edge's importance ``|score|``, sorted from the largest, ``[n_edges]``."""
    flat = torch.cat([s.detach().flatten() for s in prune_scores.values()])  # on their device
    return flat.abs().sort(descending=True).values


def prune_scores_threshold(prune_scores: PruneScores | torch.Tensor, edge_count: int) -> torch.Tensor:
    """The importance of the ``edge_count``-th most important edge (``inf`` for 0): the
    circuit of that size holds every edge at least this important, ties included.
    ``prune_scores`` may be :func:`desc_prune_scores`' output."""
    if edge_count == 0:
        return torch.tensor(float("inf"))
    desc = prune_scores if isinstance(prune_scores, torch.Tensor) else desc_prune_scores(prune_scores)
    if desc.ndim != 1:
        raise ValueError("pass PruneScores or the 1-D output of desc_prune_scores")
    if not 0 < edge_count <= desc.numel():
        raise ValueError(f"edge_count {edge_count} is outside 0..{desc.numel()}")
    return desc[edge_count - 1]


def circuit_thresholds(
    flat_importance: torch.Tensor, counts: Sequence[int]
) -> dict[int, float | None]:
    """Actual size -> importance threshold (edges with importance >= it are in the
    circuit; ``None``: the empty circuit) for each requested size. Ties enter together,
    so the actual size of a request is the number of edges at least as important as the
    ``k``-th."""
    n = flat_importance.numel()
    ordered = torch.sort(flat_importance, descending=True).values
    out: dict[int, float | None] = {}
    for k in counts:
        if k <= 0:
            out[0] = None
            continue
        threshold = ordered[min(k, n) - 1].item()
        actual = int((flat_importance >= threshold).sum())
        out[actual] = threshold
    return dict(sorted(out.items()))


def circuit_masks(
    model: PatchableModel,
    prune_scores: PruneScores,
    threshold: float | None,
    in_circuit_value: float,
) -> dict[str, torch.Tensor]:
    """Masks that are ``in_circuit_value`` on edges with ``abs(score) >= threshold`` and
    ``1 - in_circuit_value`` elsewhere (``threshold=None``: no edge is in the circuit)."""
    masks = {}
    for name in model.dest_modules:
        score = prune_scores[name].detach().abs().to(model.device)
        inside = score >= threshold if threshold is not None else torch.zeros_like(score, dtype=torch.bool)
        masks[name] = torch.where(inside, in_circuit_value, 1.0 - in_circuit_value).float()
    return masks


def circuit_edges(model: PatchableModel, prune_scores: PruneScores, size: int) -> list[Edge]:
    """The edges of the circuit of (at least) ``size`` edges, in graph order.

    Raises:
        ValueError: scores that do not fit the model, or hold NaN (naming the edges).
    """
    _check_scores(model, prune_scores)
    size = require_int(size, "size", 0)
    flat = flat_prune_scores(prune_scores, model).abs()
    ((_, threshold),) = list(circuit_thresholds(flat, [size]).items())
    if threshold is None:
        return []
    return [e for e in model.edges if abs(prune_scores[e.dest.module_name][e.patch_idx]) >= threshold]


def circuits_outputs(
    model: PatchableModel,
    tokens: torch.Tensor,
    lengths: torch.Tensor | None,
    masks: dict[str, torch.Tensor],
    patch: torch.Tensor,
    copies: int,
    src_dims: torch.Tensor | None = None,
) -> torch.Tensor:
    """The outputs ``[copies, batch, ...]`` of ``copies`` circuits in one pass: copy ``i``
    of ``tokens`` ``[batch, seq]`` (right-padded to ``lengths``, or not) runs circuit ``i``
    of ``masks`` (stacked on a first axis; unstacked for one circuit), patched from
    ``patch`` (and ``src_dims``, see :meth:`PatchableModel.patch`)."""
    lengths = None if lengths is None else lengths.repeat(copies)
    with model.patch(masks, patch, src_dims=src_dims):
        outs = model.outputs(tokens.repeat(copies, 1), lengths)
    return outs.view(copies, tokens.shape[0], *outs.shape[1:])


def _batch_circuits(
    model: PatchableModel,
    batch: PromptPairBatch,
    sizes: list[tuple[int, float | None]],
    prune_scores: PruneScores,
    in_value: float,
    clean_input: bool,
    ablation: AblationType,
    patch_from: CleanCorrupt,
    mean: torch.Tensor | None,
    per_pass: int,
    fit: int,
) -> dict[int, torch.Tensor]:
    """Every circuit's output on one batch, ``fit`` prompt-circuits per pass: whole batches
    with up to ``fit // prompts`` circuits stacked, or slices of ``fit`` prompts."""
    tokens = batch.clean if clean_input else batch.corrupt
    prompts = tokens.shape[0]
    stack = max(1, min(per_pass, fit // prompts))
    step = min(prompts, max(1, fit))
    whole = mean
    if whole is None and ablation.mean_over_batch:
        whole = batch_ablation(model, batch, ablation, patch_from, max_prompts=step)
    parts: dict[int, list[torch.Tensor]] = {size: [] for size, _ in sizes}
    for lo in range(0, prompts, step):
        part = sub_batch(batch, lo, min(lo + step, prompts))
        toks = tokens[lo : lo + step]
        patch = None  # the previous slice's patches go before the next are computed (peak memory)
        patch = whole if whole is not None else batch_ablation(model, part, ablation, patch_from)
        for i in range(0, len(sizes), stack):
            chunk = sizes[i : i + stack]
            masks = [circuit_masks(model, prune_scores, t, in_value) for _, t in chunk]
            c = len(chunk)
            stacked = masks[0] if c == 1 else {n: torch.stack([m[n] for m in masks]) for n in masks[0]}
            for (size, _), out in zip(chunk, circuits_outputs(model, toks, part.lengths, stacked, patch, c)):
                parts[size].append(out)
    return {size: p[0] if len(p) == 1 else torch.cat(p) for size, p in parts.items()}


@scoring_entry
def run_circuits(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    test_edge_counts: Sequence[int | float],
    prune_scores: PruneScores,
    patch_type: PatchType = PatchType.TREE_PATCH,
    ablation_type: AblationType = AblationType.RESAMPLE,
    reverse_clean_corrupt: bool = False,
    progress: bool = True,
    circuits_per_pass: int | None = None,
    max_memory: MaxMemory = None,
    ablation_values: torch.Tensor | None = None,
) -> CircuitOutputs:
    """The model's output (at ``model.out_slice``; for a right-padded batch, at each
    prompt's own last token) on every batch with only the circuit of each size intact.

    ``patch_type`` and ``ablation_type`` may also be given by name (``"tree_patch"`` or
    ``"tree"``, ``"zero"``; any case).

    ``TREE_PATCH``: run the clean prompts, ablate every edge outside the circuit.
    ``EDGE_PATCH``: run the corrupt prompts and patch the circuit's edges with the
    ``ablation_type`` values of the clean prompts (resample: their activations; zero:
    zeros; batch means: the clean batch's means; dataset means: as for ``TREE_PATCH``).
    ``reverse_clean_corrupt`` swaps the roles. (auto-circuit's default patch type is
    ``EDGE_PATCH``; edgewise's is ``TREE_PATCH``.)

    ``ablation_values`` ``[n_srcs, 1, 1 | seq, d_model]`` (``TREE_PATCH`` only, instead of
    ``ablation_type``): what ablated edges carry, the same for every prompt, e.g. MIB's
    optimal ablation (:func:`~edgewise.prune_algos.optimal_ablation.optimal_ablation_values`).

    ``max_memory`` (bytes, ``"2GiB"``, ``"auto"``) bounds each pass's patch buffers: a
    batch that does not fit runs as slices of prompts (and fewer stacked circuits per
    pass), with the same outputs; the plan is shown in the progress bar. A pass that runs
    out of memory is retried with half the prompts, with a warning.

    Returns:
        actual circuit size -> batch key -> output ``[batch, (seq,) vocab]``.
    """
    patch_type, ablation_type = PatchType(patch_type), AblationType(ablation_type)
    require_full_prompts(dataloader, model, ablation_type)
    _check_scores(model, prune_scores)
    batches = loader_batches(dataloader, "run_circuits")
    check_batches_for_model(model, batches, "run_circuits", right_padded=True)
    if ablation_values is None:
        refuse_padded_means(batches, ablation_type, "run_circuits")
    if circuits_per_pass is not None:
        circuits_per_pass = require_int(circuits_per_pass, "circuits_per_pass", 1)
    if isinstance(test_edge_counts, int | float):
        raise TypeError(
            f"test_edge_counts must be a list of circuit sizes, got {test_edge_counts!r}; "
            f"write [{test_edge_counts!r}]"
        )
    requested = list(test_edge_counts)
    # exactly the sizes asked for (fractions resolved): 0 and n_edges only if asked for
    whole = any(c == model.n_edges if isinstance(c, int) else c == 1.0 for c in requested)
    counts = edge_counts_util(model.n_edges, requested, zero_edges=0 in requested, all_edges=whole)
    thresholds = circuit_thresholds(flat_prune_scores(prune_scores, model).abs(), counts)
    ablation = ablation_type
    patch_from = "clean" if (patch_type == PatchType.TREE_PATCH) == reverse_clean_corrupt else "corrupt"
    mean = src_ablations(model, dataloader, ablation) if ablation.mean_over_dataset else None
    if ablation_values is not None:
        if patch_type != PatchType.TREE_PATCH:
            raise ValueError("ablation_values replace what ablated edges carry: use TREE_PATCH")
        mean = check_ablation_values(model, ablation_values, ablation_type)
    sizes = list(thresholds.items())
    per_pass = circuits_per_pass or (1 if model.device.type == "cpu" else min(len(sizes), 16))
    in_value = 0.0 if patch_type == PatchType.TREE_PATCH else 1.0
    clean_input = (patch_type == PatchType.TREE_PATCH) != reverse_clean_corrupt
    outputs: CircuitOutputs = {size: {} for size in thresholds}
    # Data parallel under torch.distributed: rank r runs batches r, r + world, ...; every
    # rank returns every batch's outputs
    rank, world = rank_and_world()
    mine = my_share(batches)
    budget = parse_memory(max_memory, model.device)
    bar = tqdm(total=len(sizes) * len(mine), desc="circuits", disable=not progress or rank != 0)
    limit: int | None = None  # prompts x circuits per pass, lowered after running out of memory
    with torch.inference_mode():
        for batch in mine:
            prompts, seq = batch.clean.shape
            # prompts x stacked circuits per pass that fit the budget
            fit = plan_passes(model, prompts * per_pass, seq, budget, blocks_ok=False).chunk
            fit = min(fit, limit) if limit is not None else fit
            if budget is not None or limit is not None:
                bar.set_postfix_str(f"{min(fit, prompts)} prompts x {max(1, min(per_pass, fit // prompts))} "
                                    f"circuits/pass" + (f", max_memory {human(budget)}" if budget else ""))  # fmt: skip
            while True:
                try:
                    outs = _batch_circuits(model, batch, sizes, prune_scores, in_value, clean_input,
                                           ablation, patch_from, mean, per_pass, fit)  # fmt: skip
                    break
                except Exception as exc:
                    if not is_out_of_memory(exc) or fit <= 1:
                        raise
                    warnings.warn(f"out of memory in batch {batch.key} ({fit} prompt-circuits per "
                                  f"pass): retrying it with {fit // 2}", stacklevel=2)  # fmt: skip
                    fit = limit = fit // 2
            for size, out in outs.items():
                outputs[size][batch.key] = out
            bar.update(len(sizes))
    bar.close()
    if world > 1:
        parts = gather_objects({size: {k: v.cpu() for k, v in per.items()} for size, per in outputs.items()})
        outputs = {size: {} for size in thresholds}
        for i, b in enumerate(batches):  # batches in the dataloader's order
            part = parts[i % world]
            for size in outputs:
                outputs[size][b.key] = part[size][b.key].to(model.device)
    return outputs
