"""Baselines every circuit-discovery method should beat (or, for ground truth, match):
random scores, activation magnitude, and the official circuit itself."""

from __future__ import annotations

import torch

from edgewise.data import PromptDataLoader, checked_batches, require_full_prompts
from edgewise.data.checks import scoring_entry
from edgewise.patching.model import PatchableModel
from edgewise.types import Edge, PruneScores


@scoring_entry
def random_prune_scores(
    model: PatchableModel,
    dataloader: PromptDataLoader | None = None,
    official_edges: set[Edge] | None = None,
    seed: int = 0,
) -> PruneScores:
    """Independent uniform [0, 1) scores, the same for the same ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    dtype = model.score_dtype
    return {n: torch.rand(m.mask_shape, generator=gen, dtype=torch.float64).to(dtype).to(model.device)
            for n, m in model.dest_modules.items()}  # fmt: skip


@scoring_entry
def activation_magnitude_prune_scores(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    official_edges: set[Edge] | None = None,
    progress: bool = False,
) -> PruneScores:
    """auto-circuit's activation magnitude: each edge scores ``|mean(out_s)|``, the
    absolute value of the signed mean of its source's output on a batch's clean prompts
    (over prompts, positions and ``d_model`` at once), averaged over batches. The same
    for every destination, head and token position of the source. (The mean L2 norm is
    :func:`activation_norm_prune_scores`.)"""
    require_full_prompts(dataloader, model, supported=False)  # its means include the prefix
    checked_batches(model, dataloader, "activation_magnitude_prune_scores")
    total, n_batches = None, 0
    for batch in dataloader:
        means = model.src_outs(batch.clean).double().flatten(1).mean(dim=1).abs()  # [n_srcs]
        total = means if total is None else total + means
        n_batches += 1
    if total is None:
        raise ValueError("the dataloader is empty")
    return _source_scores(model, total / n_batches)


@scoring_entry
def activation_norm_prune_scores(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    official_edges: set[Edge] | None = None,
    progress: bool = False,
) -> PruneScores:
    """Each edge scores the mean L2 norm (over ``d_model``) of its source's output on the
    clean prompts: the mean over prompts and positions, or per position for edges with
    token positions. An edge from a loud source ranks high, whatever its destination."""
    require_full_prompts(dataloader, model, supported=False)  # its means include the prefix
    checked_batches(model, dataloader, "activation_norm_prune_scores")
    total: torch.Tensor | None = None  # [n_srcs, seq] sums over prompts
    count = 0
    for batch in dataloader:
        norms = model.src_outs(batch.clean).double().norm(dim=-1).sum(dim=1)  # [n_srcs, seq]
        if total is not None and norms.shape != total.shape:
            if model.seq_len is not None:
                raise ValueError("prompts of different lengths in a graph with token positions")
            norms, total = norms.sum(-1, keepdim=True), total.sum(-1, keepdim=True)
        total = norms if total is None else total + norms
        count += batch.clean.shape[0]
    if total is None:
        raise ValueError("the dataloader is empty")
    mean = total / count  # [n_srcs, seq]
    return _source_scores(model, mean if model.seq_len is not None else mean.sum(-1) / mean.shape[-1])


def _source_scores(model: PatchableModel, per_src: torch.Tensor) -> PruneScores:
    """Every edge scores its source's value: ``per_src`` ``[n_srcs]``, or ``[n_srcs, seq]``
    (one value per token position, for edges with positions)."""
    scores = {n: torch.zeros(m.mask_shape, dtype=model.score_dtype, device=model.device)
              for n, m in model.dest_modules.items()}
    for e in model.edges:
        at = (e.src.src_idx,) if per_src.ndim == 1 or e.seq_idx is None else (e.src.src_idx, e.seq_idx)
        scores[e.dest.module_name][e.patch_idx] = float(per_src[at])
    return scores


@scoring_entry
def ground_truth_prune_scores(
    model: PatchableModel,
    dataloader: PromptDataLoader | None = None,
    official_edges: set[Edge] | None = None,
) -> PruneScores:
    """1 for the edges of ``official_edges``, 0 for every other edge. An official edge
    that is not one of ``model.edges`` (made for another model or graph) is a
    ``ValueError`` naming it."""
    if official_edges is None:
        raise ValueError(
            "ground-truth scores need the official circuit: pass official_edges (e.g. "
            "edgewise.benchmarks.official.tracr.tracr_official_edges(model, 'reverse', 'resample'))"
        )
    graph_edges = set(model.edges)
    foreign = [e for e in official_edges if e not in graph_edges]
    if foreign:
        shown = ", ".join(map(repr, sorted(foreign, key=repr)[:3]))
        raise ValueError(
            f"ground_truth_prune_scores: {len(foreign)} official edge(s) are not in the model's "
            f"graph ({model.n_edges} edges, seq_len={model.seq_len}), e.g. {shown}; their "
            "patch_idx would mark other edges. Build the official circuit from this model "
            "(e.g. task.official_edges(model)), or wrap the model as the circuit expects "
            "(seq_len, separate_qkv, factorized)."
        )
    dtype = model.score_dtype
    scores = {n: torch.zeros(m.mask_shape, dtype=dtype, device=model.device)
              for n, m in model.dest_modules.items()}
    for e in official_edges:
        scores[e.dest.module_name][e.patch_idx] = 1.0
    return scores
