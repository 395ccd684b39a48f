"""EAP-IG on activations ("EAP-IG-activations" in MIB and hannamw/EAP-IG): edge attribution
patching with gradients averaged over passes that each move one *source module's output*
along the straight line from its ablated to its clean activation.

For each source module ``n`` (the embeddings, each layer's attention output with all its
heads together, each MLP) and each ``k = 1..m``, one pass on the clean prompt replaces
``n``'s output by the *constant* (detached)::

    z_n(k) = clean_n + (1 - k/m) (ablated_n - clean_n)      (k = m: the clean value)

and reads the gradient at every destination's input. Every edge's score is::

    score(s -> d) = 1/(|N| m) sum_{n, k} (ablated_s - clean_s) . dL/d input_d (pass n, k)

summed over batches (``|N|`` the number of modules moved) and, by default, divided by the
number of prompts (``scale="mean"``, MIB's; :mod:`edgewise.io.scale`). As in hannamw/EAP-IG, every
edge gets a term from every pass, not only the edges out of ``n``; and because ``z_n(k)``
is a constant, no gradient flows through ``n`` to the destinations before it in that pass.

What holds: with ``sources=[n]`` the scores of the edges out of ``n`` sum to the left
Riemann sum ``1/m sum_{t = 0, 1/m, ..} d/dt L(clean_n + t (ablated_n - clean_n))``, which
tends to ``L(n ablated) - L(clean)`` (completeness, per module); with ``m = 1`` those edges
score exactly as in EAP.

Conventions confirmed in hannamw/EAP-IG ``src/eap/attribute.py``
(``get_scores_ig_activations``, commit 7af394a that MIB-circuit-track pins): the modules
moved (input, ``a{l}.h0`` = the whole layer's ``attn.hook_result``, ``m{l}``), ``k = 1..m``
with ``alpha = k/m`` weighting the clean activation, the hook's value a constant, the
difference ``corrupt - clean``, the division by the total number of passes and then by the
number of prompts (``scale="mean"``; ``scale="sum"`` leaves the sum over batches). MIB's "input" node is ``hook_embed``;
edgewise moves ``blocks.0.hook_resid_pre`` (the same path for resample ablation, where the
position embeddings cancel). For mean and optimal ablations EAP-IG interpolates towards
0 while multiplying by ``mean - clean`` or ``optimal - clean`` (its corrupt buffer is
never filled); here the path ends at the ablation itself, for every ablation type and for
fixed ``ablation_values`` (MIB's optimal ablation,
:func:`~edgewise.prune_algos.optimal_ablation.optimal_ablation_values`).
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
    checked_batches,
    refuse_padded_means,
    require_full_prompts,
)
from edgewise.data.checks import scoring_entry
from edgewise.graph.build import SrcModule
from edgewise.io.scale import Scale, apply_scale, check_scale, count_prompts
from edgewise.patching.model import PatchableModel
from edgewise.prune_algos.eap_ig import hooked_mask_grads
from edgewise.prune_algos.grad_rules import GradRule, check_grad_rules, gradient_rules
from edgewise.prune_algos.loss import (
    AnswerFunction,
    GradFunction,
    check_loss_functions,
)
from edgewise.runtime.ablation import batch_src_ablations, check_ablation_values
from edgewise.types import AblationType, Edge, PruneScores


def module_output_hook(module: SrcModule) -> str:
    """The hook whose output is source module ``module``'s whole contribution to the
    residual stream: ``blocks.0.hook_resid_pre`` (embeddings), ``blocks.{b}.hook_attn_out``
    (all heads of block ``b`` and ``b_O``) or ``blocks.{b}.hook_mlp_out``."""
    if module.kind == "embed":
        return module.module_name
    return f"blocks.{module.block}.hook_{'attn' if module.kind == 'attn' else 'mlp'}_out"


@scoring_entry
def eap_ig_activations_prune_scores(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    official_edges: set[Edge] | None = None,
    grad_function: GradFunction = "logit",
    answer_function: AnswerFunction = "avg_diff",
    integrated_grad_samples: int = 5,
    ablation_type: AblationType = AblationType.RESAMPLE,
    clean_corrupt: Literal["clean", "corrupt"] | None = "corrupt",
    sources: Iterable[str] | None = None,
    progress: bool = True,
    grad_rules: Iterable[GradRule] | None = (),
    ablation_values: torch.Tensor | None = None,
    scale: Scale = "mean",
) -> PruneScores:
    """Score every edge by EAP-IG on activations (see the module doc).

    Args:
        model: the patchable model.
        dataloader: clean / corrupt prompt pairs.
        official_edges: unused (the common signature of scoring functions).
        grad_function, answer_function: the loss, as in ``mask_gradient_prune_scores``.
        integrated_grad_samples: ``m``, the points per module (``k = 1..m``; MIB's
            ``--ig-steps``, default 5 there).
        ablation_type, clean_corrupt: where each path ends (the ablated activations).
        sources: names of the source modules to move (``model.src_modules``, e.g.
            ``"blocks.0.attn.hook_result"``); default every one, as MIB does.
        progress: show a progress bar.
        grad_rules: gradient corrections (:mod:`edgewise.prune_algos.grad_rules`).
        ablation_values: instead of ``ablation_type``, fixed patch activations
            ``[n_srcs, 1, 1 | seq, d_model]`` shared by every prompt where each path ends,
            e.g. MIB's optimal ablation (``--ablation optimal``).
        scale: ``"mean"`` (default, MIB's): divided by the number of prompts;
            ``"sum"``: the sum over batches (:mod:`edgewise.io.scale`).

    Returns:
        Destination module name -> scores shaped like its mask
        (``[(seq,) (heads,) n_srcs]``).
    """
    check_loss_functions(grad_function, answer_function)
    scale = check_scale(scale)
    grad_rules = check_grad_rules(grad_rules)
    ablation_type = AblationType(ablation_type)
    m = require_int(integrated_grad_samples, "integrated_grad_samples", 1)
    require_full_prompts(dataloader, model, ablation_type)
    modules = modules_to_move(model, sources)
    fixed = None if ablation_values is None else check_ablation_values(model, ablation_values, ablation_type)
    if ablation_type.mean_over_dataset or fixed is not None:
        clean_corrupt = None
    from_corrupt = ablation_type == AblationType.RESAMPLE and clean_corrupt == "corrupt"
    batches = checked_batches(
        model, dataloader, "eap_ig_activations_prune_scores", answer_function, from_corrupt,
        right_padded=True,
    )
    if fixed is None:
        refuse_padded_means(batches, ablation_type, "eap_ig_activations_prune_scores")
        patches = batch_src_ablations(model, dataloader, ablation_type, clean_corrupt)
    else:
        patches = {b.key: fixed for b in batches}
    dtype = model.score_dtype
    scores = {
        n: torch.zeros(mod.mask_shape, dtype=dtype, device=model.device)
        for n, mod in model.dest_modules.items()
    }
    passes = len(modules) * m
    bar = tqdm(total=len(batches) * passes, desc="EAP-IG activations", disable=not progress)
    with gradient_rules(model, grad_rules) as ruled:
        for batch in batches:
            patch = patches[batch.key]
            clean = ruled.src_outs(batch.clean)  # [n_srcs, batch, seq, d_model]
            delta = patch.expand_as(clean) - clean
            for module in modules:
                step = delta[module.src_lo : module.src_hi].sum(0)  # [batch, seq, d_model]
                for k in range(1, m + 1):
                    hook = (module_output_hook(module), moved_output_hook(step, 1.0 - k / m))
                    grads = hooked_mask_grads(ruled, [hook], patch, delta, batch,
                                              grad_function, answer_function, dtype)  # fmt: skip
                    for name, grad in grads.items():
                        scores[name] += grad / passes
                    bar.update()
    bar.close()
    return apply_scale(scores, scale, count_prompts(batches))


def modules_to_move(model: PatchableModel, sources: Iterable[str] | None) -> list[SrcModule]:
    """The source modules to move, in graph order, each with a hook the model has."""
    every = list(model.graph.src_modules)
    if sources is None:
        chosen = every
    else:
        names = [sources] if isinstance(sources, str) else list(sources)
        unknown = [n for n in names if n not in model.src_modules]
        if unknown or not names:
            raise ValueError(
                f"sources must name source modules of the model, got {unknown or names}; "
                f"they are: {', '.join(model.src_modules)}"
            )
        chosen = [mod for mod in every if mod.module_name in names]
    missing = [
        module_output_hook(mod)
        for mod in chosen
        if model.adapter.resolve(module_output_hook(mod)) is None
    ]
    if missing:
        raise ValueError(
            f"EAP-IG on activations replaces each module's output at its hook, and "
            f"{type(model.wrapped_model).__name__} lacks {', '.join(missing)}"
        )
    return chosen


def moved_output_hook(step: torch.Tensor, t: float):
    """A hook returning ``clean + t * step`` as a constant (no gradient to the module)."""

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
        return (out.detach() + t * step.to(out.dtype)).detach()

    return hook
