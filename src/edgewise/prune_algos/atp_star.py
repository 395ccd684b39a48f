"""AtP* for edges (Kramár et al. 2024, "AtP*: An efficient and scalable method for
localizing LLM behaviour to components"): the two fixes of edge attribution patching.

- **QK fix.** EAP linearises an edge into a query or key input through the attention
  softmax, which saturates. For those edges the attention pattern is recomputed exactly
  with the edge patched alone (a forward pass up to the destination's layer, many edges
  per pass as stacked circuits), and only what follows the pattern is linearised::

      score(s -> h.Q/K) = sum dL/dA_layer . (A_layer(edge patched) - A_layer(clean))

- **GradDrop.** Gradients through different layers can cancel. Per batch the score is
  ``1/(L-1) sum_l |score with the gradient through layer l's residual contributions
  (attention and MLP outputs) set to 0|``: one backward pass per layer.

Every other edge keeps its EAP score (the mask gradient at 0), so with neither fix this
is EAP.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from edgewise.checks import require_int
from edgewise.data import (
    PromptDataLoader,
    PromptPairBatch,
    checked_batches,
    require_full_prompts,
)
from edgewise.data.checks import scoring_entry
from edgewise.patching.model import PatchableModel
from edgewise.prune_algos.loss import (
    AnswerFunction,
    GradFunction,
    answer_loss,
    check_loss_functions,
    grad_values,
)
from edgewise.runtime.ablation import batch_src_ablations
from edgewise.types import AblationType, Edge, PruneScores


class _DropGrad(torch.autograd.Function):
    """Identity whose backward passes no gradient (GradDrop)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return torch.zeros_like(g)


@scoring_entry
def atp_star_prune_scores(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    official_edges: set[Edge] | None = None,
    grad_function: GradFunction = "logit",
    answer_function: AnswerFunction = "avg_diff",
    qk_fix: bool = True,
    grad_drop: bool = False,
    ablation_type: AblationType = AblationType.RESAMPLE,
    edges_per_pass: int | None = None,
    progress: bool = True,
) -> PruneScores:
    """Score every edge by AtP* (see the module doc).

    Args:
        model: the patchable model (factorized with separate Q/K/V for the QK fix).
        dataloader: clean / corrupt prompt pairs.
        official_edges: unused (the common signature of scoring functions).
        grad_function, answer_function: the loss, as in ``mask_gradient_prune_scores``.
        qk_fix: recompute attention patterns exactly for query and key edges.
        grad_drop: average ``|score|`` over backward passes that each drop one layer.
        ablation_type: what a patched edge carries (per-batch ablations).
        edges_per_pass: Q/K edges per forward pass of the QK fix (4 on a CPU, else 32).
        progress: show a progress bar.

    Returns:
        Destination module name -> scores shaped like its mask.
    """
    check_loss_functions(grad_function, answer_function)
    ablation_type = AblationType(ablation_type)
    if qk_fix and not (model.factorized and model.separate_qkv):
        raise ValueError("the QK fix needs separate query and key destinations: build the model "
                         "with patchable_model(model) (factorized, separate_qkv=True)")
    n_layers = int(model.cfg.n_layers)
    if grad_drop and n_layers < 2:
        raise ValueError("GradDrop averages over dropping each of L >= 2 layers")
    if edges_per_pass is None:
        edges_per_pass = 4 if model.device.type == "cpu" else 32
    edges_per_pass = require_int(edges_per_pass, "edges_per_pass", 1)
    checked_batches(model, dataloader, "atp_star_prune_scores", answer_function,
                    ablation_type == AblationType.RESAMPLE)  # fmt: skip
    qk = [e for e in model.edges if e.dest.qkv in ("q", "k")] if qk_fix else []
    layers = sorted({model.dest_modules[e.dest.module_name].block for e in qk})
    # the QK fix recomputes attention from the keys its hooks see, which miss a cached prefix
    require_full_prompts(dataloader, model, ablation_type, supported=not qk_fix)
    patches = batch_src_ablations(model, dataloader, ablation_type, "corrupt")
    dtype = model.score_dtype
    drops: list[int | None] = list(range(n_layers)) if grad_drop else [None]
    scores = {n: torch.zeros(m.mask_shape, dtype=dtype, device=model.device)
              for n, m in model.dest_modules.items()}  # fmt: skip
    by_layer: dict[int, int] = {}
    for e in qk:
        block = model.dest_modules[e.dest.module_name].block
        by_layer[block] = by_layer.get(block, 0) + 1
    qk_passes = sum(-(-n // edges_per_pass) for n in by_layer.values())  # the QK fix's passes
    bar = tqdm(total=len(dataloader) * (len(drops) + qk_passes), unit="pass",
               desc="AtP* gradients" + (" + Q/K patterns" if qk else ""), disable=not progress)
    for batch in dataloader:
        patch = patches[batch.key]
        runs, grads_a = {}, {}
        for drop in drops:  # the masks are 0, so every pass has the clean patterns
            runs[drop], grads_a[drop], clean = _gradients(
                model, batch, patch, grad_function, answer_function, drop, layers, dtype
            )
            bar.update()
        if qk:  # Q/K edges: the exact change of the pattern instead of its linearisation
            exact = _qk_scores(model, batch, patch, qk, edges_per_pass, grads_a, clean, bar)
            for drop in drops:
                for e, value in zip(qk, exact[drop]):
                    runs[drop][e.dest.module_name][e.patch_idx] = value
        for n in scores:
            if grad_drop:
                scores[n] += sum(runs[d][n].abs() for d in drops) / (n_layers - 1)
            else:
                scores[n] += runs[None][n]
    bar.close()
    return scores


def _gradients(
    model: PatchableModel,
    batch: PromptPairBatch,
    patch: torch.Tensor,
    grad_function: GradFunction,
    answer_function: AnswerFunction,
    drop: int | None,
    layers: list[int],
    dtype: torch.dtype,
) -> tuple[dict[str, torch.Tensor], dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Mask gradients at 0 (EAP), ``dL/dpattern`` of ``layers`` (with the gradient
    through layer ``drop``'s attention and MLP outputs set to 0), and the clean patterns."""
    adapter = model.adapter
    patterns: dict[int, torch.Tensor] = {}

    def keep(layer: int):
        def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            patterns[layer] = out

        return hook

    def dropped(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
        return _DropGrad.apply(out)

    masks = model.new_masks(0.0, requires_grad=True, dtype=dtype)
    points = [(f"blocks.{layer}.attn.hook_pattern", keep(layer)) for layer in layers]
    if drop is not None:
        points += [(f"blocks.{drop}.{leaf}", dropped) for leaf in ("hook_attn_out", "hook_mlp_out")
                   if adapter.resolve(f"blocks.{drop}.{leaf}") is not None]  # fmt: skip
    with model.hooks(points), model.patch(masks, patch, param_grads=False):  # drops before reads
        logits = model.outputs(batch.clean)
    loss = answer_loss(grad_values(logits, grad_function), batch, answer_function)
    inputs = list(masks.values()) + [patterns[layer] for layer in layers]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    mask_grads = {n: (g if g is not None else torch.zeros_like(m)).detach()
                  for (n, m), g in zip(masks.items(), grads)}  # fmt: skip
    pattern_grads = {
        layer: (g if g is not None else torch.zeros_like(patterns[layer])).detach()
        for layer, g in zip(layers, grads[len(masks) :])
    }
    clean = {layer: patterns[layer].detach() for layer in layers}
    return mask_grads, pattern_grads, clean


def _qk_scores(
    model: PatchableModel,
    batch: PromptPairBatch,
    patch: torch.Tensor,
    qk: list[Edge],
    edges_per_pass: int,
    grads_a: dict[int | None, dict[int, torch.Tensor]],
    clean_patterns: dict[int, torch.Tensor],
    bar: Any = None,
) -> dict[int | None, list[float]]:
    """``sum dL/dA . (A(edge patched) - A(clean))`` for each Q/K edge and each dropped layer."""
    dtype = model.dtype
    out: dict[int | None, list[float]] = {d: [0.0] * len(qk) for d in grads_a}
    by_layer: dict[int, list[int]] = {}
    for i, e in enumerate(qk):
        by_layer.setdefault(model.dest_modules[e.dest.module_name].block, []).append(i)
    for layer, idxs in by_layer.items():
        clean = clean_patterns[layer]  # [b, h, q, k]
        point = f"blocks.{layer}.attn.hook_pattern"
        for start in range(0, len(idxs), edges_per_pass):
            chunk = idxs[start : start + edges_per_pass]
            k = len(chunk)
            masks = {n: torch.zeros((k, *m.mask_shape), dtype=dtype, device=model.device)
                     for n, m in model.dest_modules.items()}  # fmt: skip
            for j, i in enumerate(chunk):
                e = qk[i]
                masks[e.dest.module_name][(j, *e.patch_idx)] = 1.0
            with model.patch(masks, patch):  # stops at the layer's pattern
                pattern = model.output_at(point, batch.clean.repeat(k, 1))
            diff = pattern.view(k, *clean.shape).double() - clean.double()
            for drop, grads in grads_a.items():
                values = torch.einsum("kbhqp,bhqp->k", diff, grads[layer].double()).tolist()
                for j, i in enumerate(chunk):
                    out[drop][i] = values[j]
            if bar is not None:
                bar.update()
    return out
