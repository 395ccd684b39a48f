"""Exact activation patching per edge: the true effect that edge attribution patching
approximates to first order.

The score of edge ``e`` is ``sum over batches of loss(e patched) - loss(nothing patched)``
with the same loss as :func:`~edgewise.prune_algos.mask_gradient.mask_gradient_prune_scores`
(so EAP's score is its linearisation at mask 0). Many edges are evaluated per forward
pass: the batch is repeated ``k`` times and copy ``j`` patches edge ``j`` alone
(stacked masks, :meth:`~edgewise.patching.PatchableModel.patch`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tqdm.auto import tqdm

from edgewise.ablation import batch_src_ablations
from edgewise.data import PromptDataLoader
from edgewise.patching import PatchableModel
from edgewise.prune_algos.loss import AnswerFunction, GradFunction, answer_loss, grad_values
from edgewise.prune_algos.mask_gradient import score_dtype
from edgewise.types import AblationType, Edge, PruneScores

CleanCorrupt = str | None


def exact_patching_prune_scores(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    official_edges: set[Edge] | None = None,
    grad_function: GradFunction = "logit",
    answer_function: AnswerFunction = "avg_diff",
    ablation_type: AblationType = AblationType.RESAMPLE,
    clean_corrupt: CleanCorrupt = "corrupt",
    edges_per_pass: int | None = None,
    edges: Iterable[Edge] | None = None,
    progress: bool = True,
) -> PruneScores:
    """Score every edge (or ``edges``) by patching it alone.

    Args:
        model: the patchable model.
        dataloader: clean / corrupt prompt pairs with answers.
        official_edges: unused (the common signature of scoring functions).
        grad_function, answer_function: the loss, as in ``mask_gradient_prune_scores``.
        ablation_type, clean_corrupt: what a patched edge carries.
        edges_per_pass: edges evaluated in one forward pass (the batch is repeated that
            many times); default 4 on a CPU, 32 elsewhere.
        edges: only these edges (the others score 0), e.g. a sample to check EAP against.
        progress: show a progress bar.

    Returns:
        Destination module name -> ``loss(edge patched) - loss(clean)`` summed over batches.
    """
    if edges_per_pass is None:
        edges_per_pass = 4 if model.device.type == "cpu" else 32
    if edges_per_pass < 1:
        raise ValueError(f"edges_per_pass must be >= 1, got {edges_per_pass}")
    if ablation_type.mean_over_dataset:
        clean_corrupt = None
    todo = list(model.edges if edges is None else edges)
    patches = batch_src_ablations(model, dataloader, ablation_type, clean_corrupt)  # type: ignore[arg-type]
    dtype = score_dtype(model)
    scores = {n: torch.zeros(m.mask_shape, dtype=dtype, device=model.device)
              for n, m in model.dest_modules.items()}
    bar = tqdm(total=len(todo) * len(dataloader), desc="exact patching", disable=not progress)
    with torch.inference_mode():
        for batch in dataloader:
            patch = patches[batch.key]
            base = answer_loss(grad_values(model(batch.clean)[model.out_slice], grad_function),
                               batch, answer_function)  # fmt: skip
            for i in range(0, len(todo), edges_per_pass):
                chunk = todo[i : i + edges_per_pass]
                k = len(chunk)
                masks = {n: torch.zeros((k, *m.mask_shape), dtype=dtype, device=model.device)
                         for n, m in model.dest_modules.items()}  # fmt: skip
                for j, e in enumerate(chunk):
                    masks[e.dest.module_name][(j, *e.patch_idx)] = 1.0
                out = model.run_patched(batch.clean.repeat(k, 1), masks, patch)
                out = out.view(k, -1, *out.shape[1:])
                for j, e in enumerate(chunk):
                    vals = grad_values(out[j][model.out_slice], grad_function)
                    loss = answer_loss(vals, batch, answer_function)
                    scores[e.dest.module_name][e.patch_idx] += (loss - base).to(dtype)
                bar.update(k)
    bar.close()
    return scores
