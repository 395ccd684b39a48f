"""Learned edge masks: subnetwork probing (Cao et al. 2021, "Low-Complexity Probing via
Finding Subnetworks", as used for edges by Conmy et al. 2023) and circuit probing over a
list of circuit sizes (in the spirit of Miller et al. 2024).

Every edge gets a logit ``theta``; its *keep* value ``k`` is a hard-concrete sample
(stretched to ``[-0.1, 1.1]``, temperature 2/3, clipped to ``[0, 1]``) or
``sigmoid(theta)``. The circuit is run with each edge's value mixed by ``k``, and
``theta`` is trained by Adam on::

    KL(clean model || circuit) + lambda * R

``R`` is the expected fraction of kept edges (the L0 penalty: ``P(k > 0)`` for
hard-concrete, ``mean(k)`` for sigmoid), or, with a ``circuit_size``, the expected number
of kept edges above that size divided by it. Two ways to run the circuit, as in
:class:`~edgewise.types.PatchType`: **edge mode** (default) runs the corrupt prompts and
restores kept edges to their clean values; **tree mode** runs the clean prompts and ablates
the edges that are not kept (patch ``1 - k`` with the corrupt values), so it learns what
to ablate. Scores are the final keep probabilities (``P(k > 0)``; higher: more needed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from edgewise.checks import require_int, require_real
from edgewise.data import PromptDataLoader, checked_batches
from edgewise.data.checks import scoring_entry
from edgewise.patching.model import PatchableModel
from edgewise.runtime.ablation import batch_src_ablations
from edgewise.types import AblationType, Edge, PruneScores

MaskFn = Literal["hard_concrete", "sigmoid"]

# hard-concrete stretch and temperature (Louizos et al. 2018)
_LEFT, _RIGHT, _TEMP = -0.1, 1.1, 2.0 / 3.0
_L0_SHIFT = _TEMP * math.log(-_LEFT / _RIGHT)


def keep_values(theta: torch.Tensor, mask_fn: MaskFn, gen: torch.Generator | None) -> torch.Tensor:
    """Keep values in ``[0, 1]``: a hard-concrete sample (noise from ``gen``) or
    ``sigmoid(theta)`` (``gen`` unused)."""
    if mask_fn == "sigmoid":
        return torch.sigmoid(theta)
    if mask_fn != "hard_concrete":
        raise ValueError(f"mask_fn must be 'hard_concrete' or 'sigmoid', got {mask_fn!r}")
    u = torch.rand(theta.shape, generator=gen, dtype=torch.float64).to(theta).clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + theta) / _TEMP)
    return (s * (_RIGHT - _LEFT) + _LEFT).clamp(0.0, 1.0)


def adam_step(optim: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One step of ``optim`` on the gradient of ``loss`` with respect to its own
    parameters (the mask logits) only: the model's weights, trainable or not, get none."""
    params = [p for group in optim.param_groups for p in group["params"]]
    for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
        p.grad = g
    optim.step()


def _expected_kept(theta: torch.Tensor, mask_fn: MaskFn) -> torch.Tensor:
    """Expected number of kept edges: ``sum P(k > 0)`` (hard-concrete) or ``sum k``."""
    if mask_fn == "sigmoid":
        return torch.sigmoid(theta).sum()
    return torch.sigmoid(theta - _L0_SHIFT).sum()


@scoring_entry
def learned_mask_prune_scores(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    official_edges: set[Edge] | None = None,
    mask_fn: MaskFn = "hard_concrete",
    learning_rate: float = 0.1,
    epochs: int = 50,
    regularize_lambda: float = 1.0,
    circuit_size: int | None = None,
    tree: bool = False,
    init_keep: float = 0.9,
    seed: int = 0,
    progress: bool = True,
) -> PruneScores:
    """Subnetwork probing of the edges (see the module doc).

    Args:
        model: the patchable model.
        dataloader: clean / corrupt prompt pairs.
        official_edges: unused (the common signature of scoring functions).
        mask_fn: ``"hard_concrete"`` (stochastic, L0 penalty) or ``"sigmoid"``.
        learning_rate, epochs: Adam on the edge logits, one step per batch per epoch.
        regularize_lambda: weight of the sparsity penalty.
        circuit_size: penalise only kept edges beyond this many (a target size).
        tree: tree mode (clean run, learn what to ablate) instead of edge mode.
        init_keep: initial keep probability of every edge.
        seed: the hard-concrete noise; the same seed gives the same scores.
        progress: show a progress bar with the loss.

    Returns:
        Destination module name -> keep probabilities shaped like its mask.
    """
    epochs = require_int(epochs, "epochs", 1)
    checked_batches(model, dataloader, "learned_mask_prune_scores", None, True)
    init_keep = require_real(init_keep, "init_keep", 0.0, 1.0, open_low=True, open_high=True,
                             meaning="a keep probability")
    learning_rate = require_real(learning_rate, "learning_rate", 0.0, open_low=True)
    regularize_lambda = require_real(regularize_lambda, "regularize_lambda", 0.0)
    if circuit_size is not None and not 0 < circuit_size <= model.n_edges:
        raise ValueError(f"circuit_size must be in 1..{model.n_edges}, got {circuit_size}")
    gen = torch.Generator().manual_seed(seed) if mask_fn == "hard_concrete" else None
    # patches: the clean values (edge mode restores them) or the corrupt ones (tree mode)
    patches = batch_src_ablations(model, dataloader, AblationType.RESAMPLE,
                                  "corrupt" if tree else "clean")  # fmt: skip
    with torch.inference_mode():
        targets = {b.key: F.log_softmax(model.outputs(b.clean).float(), -1)
                   for b in dataloader}  # fmt: skip
    p = (init_keep - _LEFT) / (_RIGHT - _LEFT) if mask_fn == "hard_concrete" else init_keep
    init = math.log(p / (1 - p))
    theta = {n: torch.full(m.mask_shape, init, device=model.device, requires_grad=True)
             for n, m in model.dest_modules.items()}  # fmt: skip
    optim = torch.optim.Adam(list(theta.values()), lr=learning_rate)
    dtype = model.dtype
    bar = tqdm(range(epochs), desc="learned masks", disable=not progress)
    for _ in bar:
        for batch in dataloader:
            keep = {n: keep_values(t, mask_fn, gen) for n, t in theta.items()}
            masks = {n: (1 - k if tree else k).to(dtype) for n, k in keep.items()}
            with model.patch(masks, patches[batch.key]):
                out = model.outputs(batch.clean if tree else batch.corrupt)
            logp = F.log_softmax(out.float(), -1)
            kl = F.kl_div(logp, targets[batch.key], log_target=True, reduction="sum") / out.shape[0]
            kept = sum(_expected_kept(t, mask_fn) for t in theta.values())
            if circuit_size is None:
                penalty = kept / model.n_edges
            else:
                penalty = F.relu(kept - circuit_size) / circuit_size
            loss = kl + regularize_lambda * penalty
            adam_step(optim, loss)
            bar.set_postfix(kl=float(kl.detach()), kept=float(kept.detach()), refresh=False)
    # circuits rank edges by |score|: report the probability of keeping each edge
    return {n: _keep_probability(t.detach(), mask_fn) for n, t in theta.items()}


def _keep_probability(theta: torch.Tensor, mask_fn: MaskFn) -> torch.Tensor:
    """``P(k > 0)`` (hard-concrete) or ``sigmoid(theta)``, computed in float64."""
    shift = _L0_SHIFT if mask_fn == "hard_concrete" else 0.0
    return torch.sigmoid(theta.double() - shift).to(theta.dtype)


@scoring_entry
def learned_mask_sizes_prune_scores(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    official_edges: set[Edge] | None = None,
    sizes: Sequence[int] = (10, 100, 1000),
    progress: bool = True,
    **kwargs: object,
) -> PruneScores:
    """Learned masks with a target size, once per size in ``sizes`` (smallest first).

    An edge scores ``len(sizes) - i`` for the first (smallest) size ``sizes[i]`` whose
    learned circuit (its top ``sizes[i]`` keep probabilities) holds it, plus half its keep
    probability at that size to order edges within a size; edges in no circuit score half
    their keep probability at the largest size (below every edge in a circuit).
    """
    order = sorted(int(s) for s in sizes)
    if not order or order[0] < 1:
        raise ValueError(f"sizes must be positive circuit sizes, got {list(sizes)}")
    order = [min(s, model.n_edges) for s in order]
    scores: PruneScores | None = None
    assigned: dict[str, torch.Tensor] = {}
    for i, size in enumerate(order):
        theta = learned_mask_prune_scores(model, dataloader, official_edges, circuit_size=size,
                                          progress=progress, **kwargs)  # type: ignore[arg-type]
        flat = torch.cat([t.flatten() for t in theta.values()])
        threshold = flat.topk(size).values.min()
        squash = 0.5 * flat
        if scores is None:
            scores = {n: torch.zeros_like(t) for n, t in theta.items()}
            assigned = {n: torch.zeros_like(t, dtype=torch.bool) for n, t in theta.items()}
        start = 0
        for n, t in theta.items():
            part = squash[start : start + t.numel()].view(t.shape)
            start += t.numel()
            new = (t >= threshold) & ~assigned[n]
            scores[n][new] = (len(order) - i) + part[new]
            assigned[n] |= new
            if i == len(order) - 1:
                rest = ~assigned[n]
                scores[n][rest] = part[rest]
    assert scores is not None
    return scores
