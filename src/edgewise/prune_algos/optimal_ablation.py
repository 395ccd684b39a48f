"""Optimal ablation values (Li & Janson 2024), as MIB's circuit track defines them: for each
source module, the constant output that, replacing the module's output at every prompt and
position, loses the least.

MIB-circuit-track ``oa.py`` (``OptimalAblationFinder``) does this per component (the token
embeddings ``hook_embed``; each layer's ``attn.hook_result``, one ``[n_heads, d_model]``
constant for all its heads together; each ``hook_mlp_out``), each optimised on its own with
the others clean: Adam (lr 1e-3, up to 1000 steps, early stopping with patience 3 checked
every 100 steps), initialised at the component's mean activation, minimising the
*language-model* next-token cross-entropy on the task's clean prompts (not the task
metric). ``EAP`` then uses ``optimal - clean`` as the activation difference
(``--ablation optimal``; hannamw/EAP-IG commit 7af394a, ``load_ablations``). Not
reproduced here: in ``oa.py`` every step draws ``next(iter(dataloader))``, the *first*
batch again, and its "mean" divides a sum over that batch's prompts and positions by the
number of steps; here the initial value is the mean over every clean prompt and position
and the steps cycle through all batches in order. The input module is edgewise's
``blocks.0.hook_resid_pre`` (token plus position embeddings), not ``hook_embed``.
``oa.py`` pads all the prompts to the longest with the EOS token and counts those
positions in its mean and loss (as tokens to read and to predict); here right-padded
batches (:mod:`edgewise.data.batches`) count only each prompt's own tokens.

The result is ``[n_srcs, 1, 1, d_model]``, a ``patch_src_outs`` for
:meth:`~edgewise.patching.model.PatchableModel.patch` and ``run_patched``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from edgewise.checks import require_int, require_real
from edgewise.data import PromptDataLoader, batch_output, checked_batches, require_full_prompts
from edgewise.data.checks import scoring_entry
from edgewise.graph.build import SrcModule
from edgewise.patching.model import PatchableModel
from edgewise.prune_algos.eap_ig_activations import module_output_hook
from edgewise.prune_algos.loss import (
    AnswerFunction,
    GradFunction,
    answer_loss,
    check_loss_functions,
    grad_values,
)

Objective = Literal["lm", "task"]


@scoring_entry
def optimal_ablation_values(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    steps: int = 1000,
    lr: float = 1e-3,
    objective: Objective = "lm",
    grad_function: GradFunction = "logit",
    answer_function: AnswerFunction = "avg_diff",
    sources: Iterable[str] | None = None,
) -> torch.Tensor:
    """Each source module's optimal constant output, ``[n_srcs, 1, 1, d_model]``.

    Args:
        model: the patchable model.
        dataloader: the prompts (only the clean ones are used).
        steps: Adam steps per module (batches taken in order, cycling); 0 returns the
            starting point, the mean over every clean prompt and position.
        lr: Adam's learning rate (MIB: 1e-3).
        objective: ``"lm"``, the mean next-token cross-entropy over all positions of the
            clean prompts (MIB's), or ``"task"``, the loss of ``grad_function`` and
            ``answer_function`` at ``model.out_slice``.
        grad_function, answer_function: the task loss, as in ``mask_gradient_prune_scores``.
        sources: names of the source modules to optimise (``model.src_modules``); the
            others keep their mean. Default: all.

    Returns:
        ``[n_srcs, 1, 1, d_model]`` in the model's dtype.
    """
    steps = require_int(steps, "steps", 0)
    lr = require_real(lr, "lr")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if objective not in ("lm", "task"):
        raise ValueError(f"objective must be 'lm' (next-token loss) or 'task', got {objective!r}")
    if objective == "task":
        check_loss_functions(grad_function, answer_function)
    require_full_prompts(dataloader, model)
    batches = checked_batches(
        model,
        dataloader,
        "optimal_ablation_values",
        answer_function if objective == "task" else None,
        right_padded=True,
    )
    wide = model.score_dtype
    total, count = None, 0
    bias: dict[str, torch.Tensor] = {}
    modules = _modules(model, sources)
    with torch.no_grad():
        for batch in batches:
            outs = model.src_outs(batch.clean).to(wide)  # [n_srcs, batch, seq, d_model]
            real = _real_positions(batch).to(outs)  # [batch, seq]: 0 on padding
            summed = torch.einsum("nbpd,bp->nd", outs, real)
            total = summed if total is None else total + summed
            count += int(real.sum())
        for mod in modules:  # what the hook adds to the sources' sum (b_O for attention)
            first = batches[0].clean
            out = model.output_at(module_output_hook(mod), first).to(wide)
            bias[mod.module_name] = (
                out - model.src_outs(first)[mod.src_lo : mod.src_hi].to(wide).sum(0)
            ).mean((0, 1))
    values = total / count  # type: ignore[operator]  # [n_srcs, d_model]
    for mod in modules:
        const = nn.Parameter(values[mod.src_lo : mod.src_hi].clone())
        opt = torch.optim.Adam([const], lr=lr)
        for step in range(steps):
            batch = batches[step % len(batches)]
            replaced = (const.sum(0) + bias[mod.module_name]).to(model.dtype)
            with model.hooks([(module_output_hook(mod), _constant(replaced))]):
                logits = model(batch.clean)
            loss = _objective(logits, batch, model, objective, grad_function, answer_function)
            opt.zero_grad()
            loss.backward()
            opt.step()
        values[mod.src_lo : mod.src_hi] = const.detach()
    return values[:, None, None, :].to(model.dtype)


def _modules(model: PatchableModel, sources: Iterable[str] | None) -> list[SrcModule]:
    every = list(model.graph.src_modules)
    if sources is None:
        return every
    names = [sources] if isinstance(sources, str) else list(sources)
    unknown = [n for n in names if n not in model.src_modules]
    if unknown:
        raise ValueError(
            f"sources must name source modules ({', '.join(model.src_modules)}), got {unknown}"
        )
    return [mod for mod in every if mod.module_name in names]


def _objective(
    logits: torch.Tensor,
    batch: Any,
    model: PatchableModel,
    objective: Objective,
    grad_function: GradFunction,
    answer_function: AnswerFunction,
) -> torch.Tensor:
    if objective == "lm":
        tokens = batch.clean
        wide = logits[:, :-1].flatten(0, 1).to(torch.promote_types(logits.dtype, torch.float32))
        if batch.lengths is None:
            return F.cross_entropy(wide, tokens[:, 1:].flatten())
        # right padding: predict each prompt's own next tokens only
        keep = _real_positions(batch)[:, 1:].flatten()
        return F.cross_entropy(wide[keep], tokens[:, 1:].flatten()[keep])
    out = batch_output(model, logits, batch)
    return answer_loss(grad_values(out, grad_function), batch, answer_function)


def _real_positions(batch: Any) -> torch.Tensor:
    """``[batch, seq]`` bool: the positions of each prompt's own tokens (all, unless the
    batch was right-padded)."""
    seq = batch.clean.shape[1]
    if batch.lengths is None:
        return torch.ones(batch.clean.shape, dtype=torch.bool, device=batch.clean.device)
    pos = torch.arange(seq, device=batch.clean.device)
    return pos[None, :] < batch.lengths.to(batch.clean.device)[:, None]


def _constant(value: torch.Tensor):
    """A hook replacing the output by ``value`` (``[d_model]``) at every prompt and position."""

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
        return value.expand_as(out)

    return hook


def add_optimal_ablation_arguments(parser: Any, ablation_help: str,
                                   ablation_type: Any = None) -> None:  # fmt: skip
    """Add ``--ablation patching|optimal`` (described by ``ablation_help``; with
    ``ablation_type``, a function reading any choice it accepts instead) and the
    fitting options ``--oa-steps``, ``--oa-lr``, ``--oa-objective`` (MIB's ``oa.py``
    defaults) to an ``argparse`` parser."""
    if ablation_type is None:
        parser.add_argument("--ablation", choices=("patching", "optimal"), default="patching",
                            help=ablation_help)
    else:
        parser.add_argument("--ablation", type=ablation_type, default="patching",
                            metavar="KIND", help=ablation_help)
    parser.add_argument("--oa-steps", type=int, default=1000, metavar="N",
                        help="--ablation optimal: Adam steps per source module (MIB: 1000)")
    parser.add_argument("--oa-lr", type=float, default=1e-3, metavar="LR",
                        help="--ablation optimal: Adam's learning rate (MIB: 1e-3)")
    parser.add_argument("--oa-objective", choices=("lm", "task"), default="lm",
                        help="--ablation optimal: the loss the constants minimise: next-token "
                             "cross-entropy on the train prompts (lm, MIB's) or the task's loss")
