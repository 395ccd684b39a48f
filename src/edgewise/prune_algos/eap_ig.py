"""EAP-IG on inputs (Hanna et al. 2024, "Have Faith in Faithfulness"): edge attribution
patching with the gradient averaged along a straight path of *input embeddings* from the
corrupt prompt to the clean one::

    score(s -> d) = (z_s(corrupt) - z_s(clean)) . 1/m sum_k dL/d input_d (x_k)
    x_k = x_corrupt + k/m (x_clean - x_corrupt)

where ``x`` is the residual stream entering the first block (token plus position
embeddings) and ``z_s`` the source's output on the clean and corrupt prompts. Unlike
integrated gradients over the masks
(:func:`~edgewise.prune_algos.mask_gradient.mask_gradient_prune_scores`), the model is
never patched; only its input moves.

By default this is MIB's EAP-IG: hannamw/EAP-IG ``get_scores_eap_ig`` in
``src/eap/attribute.py`` (commit 7af394a that MIB-circuit-track pins, and still at its
later commits) takes ``k = 0..m-1`` (``endpoint="corrupt"``: the corrupt end is on the
path and the clean end is not; with ``m = 1`` the score uses the gradient of the
corrupt run alone) and divides by the number of prompts (``scale="mean"``).
``endpoint="clean"`` takes ``k = 1..m`` instead (with ``m = 1`` it is EAP), and
``scale="sum"`` keeps the sum over batches (:mod:`edgewise.io.scale`). MIB's node-level
EAP-IG (``attribute_node.py``) takes ``k = 1..m``: see
:func:`~edgewise.prune_algos.node_attribution.node_attribution_scores`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

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
from edgewise.io.scale import Scale, apply_scale, check_scale, count_prompts
from edgewise.patching.model import PatchableModel
from edgewise.prune_algos.grad_rules import GradRule, check_grad_rules, gradient_rules
from edgewise.prune_algos.loss import (
    AnswerFunction,
    GradFunction,
    answer_loss,
    check_loss_functions,
    grad_values,
)
from edgewise.types import Edge, PruneScores

INPUT_HOOK = "blocks.0.hook_resid_pre"


@scoring_entry
def eap_ig_inputs_prune_scores(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    official_edges: set[Edge] | None = None,
    grad_function: GradFunction = "logit",
    answer_function: AnswerFunction = "avg_diff",
    integrated_grad_samples: int = 5,
    progress: bool = True,
    grad_rules: Iterable[GradRule] | None = (),
    endpoint: Literal["clean", "corrupt"] = "corrupt",
    scale: Scale = "mean",
) -> PruneScores:
    """Score every edge by EAP-IG on the input embeddings; by default exactly as MIB's
    reference code does (``k = 0..m-1``, divided by the number of prompts).

    Args:
        model: the patchable model.
        dataloader: clean / corrupt prompt pairs of the same token length.
        official_edges: unused (the common signature of scoring functions).
        grad_function, answer_function: the loss, as in ``mask_gradient_prune_scores``.
        integrated_grad_samples: ``m``, the number of points on the path (MIB's
            ``--ig-steps``, 5 by default there and here).
        progress: show a progress bar.
        grad_rules: gradient corrections (:mod:`edgewise.prune_algos.grad_rules`).
        endpoint: which end of the path is among the ``m`` points: ``"corrupt"``
            (default, ``k = 0..m-1``, MIB's edge-level EAP-IG) or ``"clean"`` (``k = 1..m``).
        scale: ``"mean"`` (default, MIB's): the sum over batches of each batch's
            mean-loss attribution divided by the number of prompts; ``"sum"``: not divided.

    Returns:
        Destination module name -> scores shaped like its mask.
    """
    check_loss_functions(grad_function, answer_function)
    scale = check_scale(scale)
    grad_rules = check_grad_rules(grad_rules)
    if endpoint not in ("clean", "corrupt"):
        raise ValueError(f"endpoint must be 'clean' (k = 1..m) or 'corrupt' (k = 0..m-1), got {endpoint!r}")
    require_full_prompts(dataloader, model)
    integrated_grad_samples = require_int(integrated_grad_samples, "integrated_grad_samples", 1)
    batches = checked_batches(model, dataloader, "eap_ig_inputs_prune_scores", answer_function,
                              True, right_padded=True)
    dtype = model.score_dtype
    scores = {n: torch.zeros(m.mask_shape, dtype=dtype, device=model.device)
              for n, m in model.dest_modules.items()}
    m = integrated_grad_samples
    bar = tqdm(total=len(batches) * m, desc="EAP-IG inputs", disable=not progress)
    with gradient_rules(model, grad_rules) as ruled:
        for batch in batches:
            _batch(ruled, batch, m, endpoint == "corrupt", grad_function, answer_function,
                   dtype, scores, bar)  # fmt: skip
    bar.close()
    return apply_scale(scores, scale, count_prompts(batches))


def _batch(model: PatchableModel, batch: PromptPairBatch, m: int, from_corrupt: bool,
           grad_function: GradFunction,
           answer_function: AnswerFunction, dtype: torch.dtype, scores: PruneScores,
           bar: tqdm) -> None:  # fmt: skip
    """Add one batch's EAP-IG scores (``k = 1..m``, or ``0..m-1`` ``from_corrupt``)
    to ``scores``."""
    if batch.clean.shape != batch.corrupt.shape:
        raise ValueError(
            "EAP-IG on inputs interpolates the clean and corrupt embeddings position by "
            f"position, so their token lengths must match; got clean {tuple(batch.clean.shape)}"
            f" and corrupt {tuple(batch.corrupt.shape)}. Pad the prompts to one length."
        )
    clean_src, corrupt_src = model.src_outs(batch.clean), model.src_outs(batch.corrupt)
    delta = corrupt_src - clean_src  # [n_srcs, batch, seq, d_model]
    x_clean = model.output_at(INPUT_HOOK, batch.clean)  # the embeddings
    x_corrupt = model.output_at(INPUT_HOOK, batch.corrupt)
    for k in range(0, m) if from_corrupt else range(1, m + 1):
        x = x_corrupt + (k / m) * (x_clean - x_corrupt)
        # the embeddings are replaced before the patch hooks read them
        grads = hooked_mask_grads(model, [(INPUT_HOOK, _replace(x))], corrupt_src, delta, batch,
                                  grad_function, answer_function, dtype)  # fmt: skip
        for name, grad in grads.items():
            scores[name] += grad / m
        bar.update()


def hooked_mask_grads(model: PatchableModel, hooks: list[tuple[str, Any]], patch: torch.Tensor,
                      delta: torch.Tensor, batch: PromptPairBatch, grad_function: GradFunction,
                      answer_function: AnswerFunction, dtype: torch.dtype) -> dict[str, torch.Tensor]:  # fmt: skip
    """The loss's gradients for every mask at 0 in one pass of ``batch.clean``, with
    ``hooks`` (hook point, function) entered before the patch hooks and the differences
    ``delta`` ``[n_srcs, batch, seq, d_model]`` fixed. A mask the loss does not reach
    (a destination cut off by a replaced activation, or Q/K under the attention-pattern
    rule) is left out."""
    masks = model.new_masks(0.0, requires_grad=True, dtype=dtype)
    with model.hooks(hooks), model.patch(masks, patch, fixed_delta=delta, param_grads=False):
        logits = model.outputs(batch.clean, batch.lengths)
    loss = answer_loss(grad_values(logits, grad_function), batch, answer_function)
    grads = torch.autograd.grad(loss, list(masks.values()), allow_unused=True)
    return {name: g for name, g in zip(masks, grads) if g is not None}


def _replace(x: torch.Tensor):
    def hook(_m: nn.Module, _i: Any, _out: torch.Tensor) -> torch.Tensor:
        return x

    return hook
