"""Scores from the gradient of the loss with respect to each edge's patch mask: edge
attribution patching (``mask_val=0``) and integrated gradients
(``integrated_grad_samples=N``)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Literal

import torch
from tqdm.auto import tqdm

from edgewise.checks import require_int, require_real
from edgewise.data import (
    PromptDataLoader,
    PromptPairBatch,
    checked_batches,
    refuse_padded_means,
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
from edgewise.runtime.ablation import batch_ablation, check_ablation_values, src_ablations
from edgewise.runtime.distributed import my_share, rank_and_world, sum_over_ranks
from edgewise.runtime.memory import (
    MaxMemory,
    Plan,
    is_out_of_memory,
    parse_memory,
    plan_passes,
    smaller_plan,
    sub_batch,
)
from edgewise.types import AblationType, Edge, PruneScores

IGMode = Literal["all", "layer"]


def _label(samples: int | None, mode: str, rules: Iterable[GradRule] | None) -> str:
    """The progress bar's label: which method the passes compute."""
    if samples is None:
        return "EAP gradients" + (" (frozen)" if rules else "")
    return f"IG gradients ({samples} steps{', per layer' if mode == 'layer' else ''})"


@scoring_entry
def mask_gradient_prune_scores(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    official_edges: set[Edge] | None,
    grad_function: GradFunction,
    answer_function: AnswerFunction,
    mask_val: float | None = None,
    integrated_grad_samples: int | None = None,
    ablation_type: AblationType = AblationType.RESAMPLE,
    clean_corrupt: Literal["clean", "corrupt"] | None = "corrupt",
    integrated_grad_mode: IGMode = "all",
    progress: bool = True,
    max_memory: MaxMemory = None,
    grad_rules: Iterable[GradRule] | None = (),
    ablation_values: torch.Tensor | None = None,
    scale: Scale = "sum",
) -> PruneScores:
    """Prune scores equal to the gradient of the loss with respect to the masks that
    interpolate every edge between its clean activation and its ablation.

    For each batch the clean prompt runs with every mask at ``mask_val`` (or, with
    ``integrated_grad_samples=N``, at each of ``0, 1/N, ..., 1`` in turn), patching from
    the ablation given by ``ablation_type`` and ``clean_corrupt``. The output at
    ``model.out_slice`` goes through ``grad_function`` and ``answer_function``; each
    mask's gradient is summed over batches and samples, in float32 (float64 for a float64
    model; never in a model's bfloat16/float16). That sum is the score (``scale="sum"``,
    auto-circuit's contract); ``scale="mean"`` divides it by the number of prompts, the
    scale of MIB's EAP (see :mod:`edgewise.io.scale`).

    With ``grad_function="logit"``, ``answer_function="avg_diff"`` and ``mask_val=0``
    this is exactly edge attribution patching: the score of ``(s, d)`` is
    ``sum over batch and positions of grad_{input_d} loss . (patch_out_s - clean_out_s)``.
    Dividing integrated-gradient scores by ``(N + 1) * n_batches`` gives attributions
    whose sum approaches ``loss(all masks 1) - loss(all masks 0)`` (completeness).

    Args:
        model: the patchable model.
        dataloader: prompt batches.
        official_edges: not used (accepted for API compatibility).
        grad_function: ``logit``, ``prob``, ``logprob`` or ``logit_exp`` (softmax with a
            detached denominator).
        answer_function: ``avg_diff``, ``avg_val`` or ``mse`` (see
            :func:`edgewise.prune_algos.loss.answer_loss`).
        mask_val: the mask value of the forward pass, in ``[0, 1]`` (0: every edge
            clean, 1: every edge ablated; anything else is a ``ValueError``). Exclusive
            with ``integrated_grad_samples``.
        integrated_grad_samples: number of interpolation steps ``N`` (``N + 1`` points).
        ablation_type: what ablated edges carry (an :class:`AblationType` or its name,
            e.g. ``"zero"``).
        clean_corrupt: which prompts per-batch ablations are computed from.
        ablation_values: instead of ``ablation_type``, fixed patch activations
            ``[n_srcs, 1, 1 | seq, d_model]`` shared by every prompt, e.g. MIB's optimal
            ablation (:func:`~edgewise.prune_algos.optimal_ablation.optimal_ablation_values`).
        integrated_grad_mode: ``"all"`` moves every mask together (as documented);
            ``"layer"`` interpolates one destination layer's masks at a time with every
            other mask at 0, so each edge's attribution is measured from the clean model.
        progress: show a progress bar.
        max_memory: a budget for each pass's patch buffers (bytes, ``"2GiB"``, ``"auto"``:
            half the device's free memory; ``None``: no limit). Batches that do not fit
            run as slices of prompts, and for edge attribution patching (every mask 0)
            with one prompt per pass and blocks of sources (see :mod:`edgewise.runtime.memory`);
            the scores are the same. The plan is shown in the progress bar. Whatever
            ``max_memory``, a pass that runs out of memory is retried with half the prompts
            (or, at one prompt, source blocks half as wide), with a warning.
        grad_rules: gradient corrections, parts of the model treated as constants in the
            backward pass (``"norm_scale"``, ``"attention_pattern"``; see
            :mod:`edgewise.prune_algos.grad_rules`). The forward pass is unchanged.
        scale: ``"sum"`` (default): the sum over batches of each batch's mean-loss
            gradient; ``"mean"``: that sum divided by the number of prompts, as MIB's
            reference code reduces (:mod:`edgewise.io.scale`).

    Returns:
        Destination module name -> scores shaped like its mask.
    """
    check_loss_functions(grad_function, answer_function)
    scale = check_scale(scale)
    grad_rules = check_grad_rules(grad_rules)
    ablation_type = AblationType(ablation_type)
    require_full_prompts(dataloader, model, ablation_type)
    if (mask_val is None) == (integrated_grad_samples is None):
        raise ValueError(
            "pass exactly one of mask_val (e.g. mask_val=0.0 for edge attribution patching) "
            "and integrated_grad_samples (e.g. integrated_grad_samples=10); "
            f"got mask_val={mask_val!r}, integrated_grad_samples={integrated_grad_samples!r}"
        )
    if mask_val is not None:
        mask_val = require_real(mask_val, "mask_val", 0.0, 1.0,
                                meaning="0: every edge clean, 1: every edge ablated")
    if integrated_grad_samples is not None:
        integrated_grad_samples = require_int(integrated_grad_samples, "integrated_grad_samples", 1)
    if integrated_grad_mode not in ("all", "layer"):
        raise ValueError(f"integrated_grad_mode must be 'all' or 'layer', got {integrated_grad_mode!r}")
    fixed = None if ablation_values is None else check_ablation_values(model, ablation_values, ablation_type)
    if ablation_type.mean_over_dataset or fixed is not None:
        clean_corrupt = None
    from_corrupt = ablation_type == AblationType.RESAMPLE and clean_corrupt == "corrupt"
    batches = checked_batches(model, dataloader, "mask_gradient_prune_scores", answer_function,
                              from_corrupt, right_padded=True)  # fmt: skip
    if fixed is None:
        refuse_padded_means(batches, ablation_type, "mask_gradient_prune_scores")
    # Data parallel under torch.distributed: rank r takes batches r, r + world, ...
    rank, world = rank_and_world()
    mine = my_share(batches)

    # One step per (group of masks moved, mask value): all masks together, or per layer.
    if integrated_grad_samples is None:
        values = [float(mask_val)]  # type: ignore[arg-type]
    else:
        values = [k / integrated_grad_samples for k in range(integrated_grad_samples + 1)]
    if integrated_grad_samples is not None and integrated_grad_mode == "layer":
        layers = sorted({d.layer for d in model.dests})
        groups = [
            [n for n in model.dest_modules if _module_layer(model, n) == layer] for layer in layers
        ]
    else:
        groups = [list(model.dest_modules)]

    dtype = model.score_dtype
    scores = {n: torch.zeros(m.mask_shape, dtype=dtype, device=model.device)
              for n, m in model.dest_modules.items()}
    steps = [(group, value) for group in groups for value in values]
    budget = parse_memory(max_memory, model.device)
    blocks_ok = integrated_grad_samples is None and mask_val == 0.0  # every mask 0
    plans = {b.key: plan_passes(model, *b.clean.shape, budget, blocks_ok) for b in mine}
    mean = fixed
    if ablation_type.mean_over_dataset:  # computed as finely as the finest plan needs
        fine = min(plans.values(), key=lambda p: (p.chunk, -len(p.blocks)), default=None)
        blocks = fine.blocks if fine is not None and len(fine.blocks) > 1 else [None]
        chunk = fine.chunk if fine is not None else None
        mean = torch.cat([src_ablations(model, dataloader, ablation_type, blk, chunk) for blk in blocks])
    bar = tqdm(total=sum(_n_passes(p, b, steps) for p, b in zip(plans.values(), mine)),
               desc=_label(integrated_grad_samples, integrated_grad_mode, grad_rules),
               unit="pass", disable=not progress or rank != 0)  # fmt: skip
    shrunk: Plan | None = None  # after running out of memory, later batches stay smaller
    # with gradient rules, the passes run on a view of the model (grad_rules.py)
    with gradient_rules(model, grad_rules) as ruled:
        for batch in mine:
            plan = plans[batch.key]
            if shrunk is not None and shrunk.chunk <= plan.chunk and len(shrunk.blocks) >= len(plan.blocks):
                plan = shrunk
            while True:
                if budget is not None or len(plan.blocks) > 1 or plan.chunk < batch.clean.shape[0]:
                    bar.set_postfix_str(plan.describe())
                try:
                    grads = _batch_grads(ruled, batch, plan, steps, ablation_type, clean_corrupt,
                                         mean, grad_function, answer_function, dtype, bar)  # fmt: skip
                    break
                except Exception as exc:
                    smaller = smaller_plan(model, plan, blocks_ok) if is_out_of_memory(exc) else None
                    if smaller is None:
                        raise
                    warnings.warn(f"out of memory in batch {batch.key} ({plan.describe()}): retrying "
                                  f"it with {smaller.describe()}", stacklevel=2)  # fmt: skip
                    bar.total += _n_passes(smaller, batch, steps)
                    plan = shrunk = smaller
            for name, grad in grads.items():
                scores[name] += grad
    bar.close()
    if world > 1:  # summed in rank order: every process gets the same bits
        scores = {name: sum_over_ranks(t) for name, t in scores.items()}
    return apply_scale(scores, scale, count_prompts(batches))


def _n_passes(plan: Plan, batch: PromptPairBatch, steps: list) -> int:
    chunks = -(-batch.clean.shape[0] // plan.chunk)
    return chunks * len(plan.blocks) * len(steps)


def _batch_grads(
    model: PatchableModel,
    batch: PromptPairBatch,
    plan: Plan,
    steps: list[tuple[list[str], float]],
    ablation_type: AblationType,
    clean_corrupt: Literal["clean", "corrupt"] | None,
    mean: torch.Tensor | None,
    grad_function: GradFunction,
    answer_function: AnswerFunction,
    dtype: torch.dtype,
    bar: tqdm,
) -> dict[str, torch.Tensor]:
    """The summed mask gradients of every step on one batch, run as ``plan`` says: per
    source block, per slice of prompts (weighted by its share of the batch's mean loss)."""
    prompts = batch.clean.shape[0]
    out = {n: torch.zeros(m.mask_shape, dtype=dtype, device=model.device)
           for n, m in model.dest_modules.items()}  # fmt: skip
    for block in plan.blocks:
        src_block = None if block == (0, len(model.srcs)) else block
        whole = mean
        if whole is None and ablation_type.mean_over_batch:  # the mean over the whole batch, in slices
            whole = batch_ablation(model, batch, ablation_type, clean_corrupt, src_block, plan.chunk)
        for lo in range(0, prompts, plan.chunk):
            part = sub_batch(batch, lo, min(lo + plan.chunk, prompts))
            weight = part.clean.shape[0] / prompts
            patch = None  # the previous slice's patches go before the next are computed (peak memory)
            patch = whole if whole is not None else batch_ablation(
                model, part, ablation_type, clean_corrupt, src_block)  # fmt: skip
            for group, value in steps:
                masks = model.new_masks(0.0, dtype=dtype)
                for name in group:
                    masks[name].fill_(value).requires_grad_(True)
                with model.patch(masks, patch, param_grads=False, src_block=src_block):
                    logits = model.outputs(part.clean, part.lengths)
                loss = answer_loss(grad_values(logits, grad_function), part, answer_function)
                if not bool(torch.isfinite(loss)):
                    raise FloatingPointError(
                        f"the loss of batch {batch.key} is {float(loss.detach())} (mask value {value}); "
                        f"{first_nonfinite_source(model, part.clean)}. Check the model's dtype "
                        "(float16 overflows) and its inputs."
                    )
                # a mask the loss does not reach (outside the block, or cut off from the
                # output) has gradient 0
                grads = torch.autograd.grad(loss, [masks[n] for n in group], allow_unused=True)
                del logits, loss  # the pass's graph (and its hold on the buffers) goes now
                grads = tuple(torch.zeros_like(masks[n]) if g is None else g
                              for n, g in zip(group, grads))  # fmt: skip
                # one reduction (and sync) per step; the edge is looked for only on failure
                if not bool(torch.isfinite(torch.stack([g.sum() for g in grads])).all()):
                    check_finite(model, dict(zip(group, grads)), f"batch {batch.key}")
                for name, grad in zip(group, grads):
                    out[name] += grad if weight == 1.0 else grad * weight
                bar.update()
    return out


def first_nonfinite_source(model: PatchableModel, tokens: torch.Tensor) -> str:
    """Which source first outputs NaN or inf on ``tokens``: the edges out of it are the
    first edges that carry it."""
    outs = model.src_outs(tokens)
    bad = (~torch.isfinite(outs)).flatten(1).any(1)
    if not bool(bad.any()):
        return "every source output is finite (the non-finite value comes later)"
    src = model.srcs[int(bad.nonzero()[0])]
    first = next(e for e in model.edges if e.src == src)
    return f"the first source with NaN or inf output is {src.name} (edges {first.name}, ...)"


def check_finite(model: PatchableModel, scores: PruneScores, where: str) -> None:
    """Raise ``FloatingPointError`` naming the first edge whose score is NaN or inf."""
    for name, score in scores.items():
        bad = ~torch.isfinite(score)
        if bool(bad.any()):
            idx = tuple(int(i) for i in bad.nonzero()[0])
            edge = next((e for e in model.edges
                         if e.dest.module_name == name and e.patch_idx == idx), None)  # fmt: skip
            label = f"{edge.name} (position {edge.seq_idx})" if edge else f"{name}{list(idx)}"
            raise FloatingPointError(
                f"the score of edge {label} is {float(score[idx])} in {where}: a NaN or inf in "
                "the activations or gradients (try float32 instead of float16, or check inputs)"
            )


def _module_layer(model: PatchableModel, module_name: str) -> int:
    return next(d.layer for d in model.dests if d.module_name == module_name)
