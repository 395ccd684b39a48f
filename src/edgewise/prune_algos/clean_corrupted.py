"""The "clean-corrupted" scores of MIB and hannamw/EAP-IG: edge attribution patching with
the gradient averaged over two passes, one on the clean prompt and one on the corrupt
prompt::

    score(s -> d) = (z_s(corrupt) - z_s(clean)) . 1/2 (dL/d input_d (clean) + dL/d input_d (corrupt))

summed over batches and, by default, divided by the number of prompts (``scale="mean"``,
MIB's; :mod:`edgewise.io.scale`), where ``L`` is the same loss on both passes (the clean
prompt's answers). It is the two-point (trapezoid) version of EAP-IG on inputs, whose path runs
between the same two inputs; its first half is EAP.

Confirmed in hannamw/EAP-IG ``src/eap/attribute.py`` (``get_scores_clean_corrupted``,
commit 7af394a that MIB-circuit-track pins): the corrupt pass is the model on the corrupt
tokens with the metric of the clean labels, the difference is ``corrupt - clean`` from
two unpatched runs, the sum is divided by 2 and by the number of prompts, and only
patching (resample) ablation is allowed.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tqdm.auto import tqdm

from edgewise.data import PromptDataLoader, batch_output, checked_batches, require_full_prompts
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


@scoring_entry
def clean_corrupted_prune_scores(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    official_edges: set[Edge] | None = None,
    grad_function: GradFunction = "logit",
    answer_function: AnswerFunction = "avg_diff",
    progress: bool = True,
    grad_rules: Iterable[GradRule] | None = (),
    scale: Scale = "mean",
) -> PruneScores:
    """Score every edge by the clean-corrupted method (see the module doc).

    Args:
        model: the patchable model.
        dataloader: clean / corrupt prompt pairs of the same token length.
        official_edges: unused (the common signature of scoring functions).
        grad_function, answer_function: the loss, as in ``mask_gradient_prune_scores``.
        progress: show a progress bar.
        grad_rules: gradient corrections (:mod:`edgewise.prune_algos.grad_rules`).
        scale: ``"mean"`` (default, MIB's): divided by the number of prompts;
            ``"sum"``: the sum over batches (:mod:`edgewise.io.scale`).

    Returns:
        Destination module name -> scores shaped like its mask
        (``[(seq,) (heads,) n_srcs]``).
    """
    check_loss_functions(grad_function, answer_function)
    scale = check_scale(scale)
    grad_rules = check_grad_rules(grad_rules)
    require_full_prompts(dataloader, model)
    batches = checked_batches(
        model, dataloader, "clean_corrupted_prune_scores", answer_function, True, right_padded=True
    )
    for batch in batches:
        if batch.clean.shape != batch.corrupt.shape:
            raise ValueError(
                "the clean-corrupted method runs the corrupt prompts with the clean prompts' "
                "answer positions, so their token lengths must match; got clean "
                f"{tuple(batch.clean.shape)} and corrupt {tuple(batch.corrupt.shape)} in batch "
                f"{batch.key}. Pad the prompts to one length."
            )
    dtype = model.score_dtype
    scores = {
        n: torch.zeros(mod.mask_shape, dtype=dtype, device=model.device)
        for n, mod in model.dest_modules.items()
    }
    bar = tqdm(total=2 * len(batches), desc="clean-corrupted", disable=not progress)
    with gradient_rules(model, grad_rules) as ruled:
        for batch in batches:
            corrupt = ruled.src_outs(batch.corrupt)
            delta = corrupt - ruled.src_outs(batch.clean)  # [n_srcs, batch, seq, d_model]
            for tokens in (batch.clean, batch.corrupt):
                masks = ruled.new_masks(0.0, requires_grad=True, dtype=dtype)
                with ruled.patch(masks, corrupt, fixed_delta=delta, param_grads=False):
                    logits = batch_output(ruled, ruled(tokens), batch)
                loss = answer_loss(grad_values(logits, grad_function), batch, answer_function)
                grads = torch.autograd.grad(loss, list(masks.values()), allow_unused=True)
                for name, grad in zip(masks, grads):
                    if grad is not None:
                        scores[name] += grad / 2
                bar.update()
    bar.close()
    return apply_scale(scores, scale, count_prompts(batches))
