"""Edge attribution patching (Syed et al. 2023) written plainly with hooks: the
independent reference that :func:`mask_gradient_prune_scores` is tested against.

Score of edge ``(s, d)``: ``sum over batch and positions of
(d loss / d input_d) . (ablated_out_s - clean_out_s)``.
"""

from __future__ import annotations

from typing import Literal

import torch
from tqdm.auto import tqdm

from edgewise.data import PromptDataLoader, checked_batches
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


def edge_attribution_patching_prune_scores(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    official_edges: set[Edge] | None = None,
    grad_function: GradFunction = "logit",
    answer_function: AnswerFunction = "avg_diff",
    ablation_type: AblationType = AblationType.RESAMPLE,
    clean_corrupt: Literal["clean", "corrupt"] | None = "corrupt",
    progress: bool = True,
) -> PruneScores:
    """Edge attribution patching with plain forward hooks and one edge at a time.

    Runs the clean prompt once with hooks that keep each source's output and the
    gradient at each destination's input, then scores every edge by a dot product.
    Slower than :func:`mask_gradient_prune_scores` (a Python loop over edges) and
    independent of its patching machinery.
    """
    check_loss_functions(grad_function, answer_function)
    ablation_type = AblationType(ablation_type)
    if ablation_type.mean_over_dataset:
        clean_corrupt = None
    from_corrupt = ablation_type == AblationType.RESAMPLE and clean_corrupt == "corrupt"
    checked_batches(model, dataloader, "edge_attribution_patching_prune_scores",
                    answer_function, from_corrupt)  # fmt: skip
    patches = batch_src_ablations(model, dataloader, ablation_type, clean_corrupt)
    scores = {n: torch.zeros(m.mask_shape, dtype=model.score_dtype, device=model.device)
              for n, m in model.dest_modules.items()}
    for batch in tqdm(dataloader, desc="EAP", disable=not progress):
        logits, acts = _run_capturing(model, batch.clean)
        loss = answer_loss(grad_values(logits, grad_function), batch, answer_function)
        dest_names = list(model.dest_modules)
        grads = dict(zip(dest_names, torch.autograd.grad(loss, [acts[n] for n in dest_names])))
        patch = patches[batch.key]
        for edge in model.edges:
            src, dest = edge.src, edge.dest
            clean_out = acts[src.module_name]
            if src.head_idx is not None:
                clean_out = clean_out[:, :, src.head_idx]
            diff = patch[src.src_idx].expand_as(clean_out) - clean_out.detach()
            grad = grads[dest.module_name]
            if dest.head_idx is not None:
                grad = grad[:, :, dest.head_idx]
            if edge.seq_idx is not None:
                grad, diff = grad[:, edge.seq_idx], diff[:, edge.seq_idx]
            scores[dest.module_name][edge.patch_idx] += (grad.double() * diff.double()).sum()
    return scores


def _run_capturing(model: PatchableModel, tokens: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Logits at ``model.out_slice`` and every source output and destination input."""
    acts: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name: str):
        # A hook's output may alias the residual stream (TransformerBridge's hook_mlp_in
        # feeds ln2 the very tensor the skip connection adds), so give the destination
        # its own copy and differentiate with respect to that.
        # With frozen weights the first destinations' inputs need no gradient; a leaf that
        # does lets the gradient be taken there (nothing upstream of it needs one).
        def hook(_m, _i, out: torch.Tensor) -> torch.Tensor:
            acts[name] = out.clone() if out.requires_grad else out.detach().clone().requires_grad_()
            return acts[name]

        return hook

    names = {s.module_name for s in model.srcs} | set(model.dest_modules)
    # TransformerLens' own per-head hooks (hook_result, hook_q_input, ...), independent of
    # the hooks PatchableModel patches at
    with model.adapter.flags(**model.graph_flags):
        try:
            for name in sorted(names):
                handles.append(model.adapter.hook_point(name).register_forward_hook(keep(name)))
            logits = model(tokens)[model.out_slice]
        finally:
            for h in handles:
                h.remove()
    return logits, acts
