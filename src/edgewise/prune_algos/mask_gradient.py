"""Scores from the gradient of the loss with respect to each edge's patch mask: edge
attribution patching (``mask_val=0``) and integrated gradients
(``integrated_grad_samples=N``)."""

from __future__ import annotations

from typing import Literal

import torch
from tqdm.auto import tqdm

from edgewise.ablation import batch_ablation, src_ablations
from edgewise.data import PromptDataLoader
from edgewise.distributed import my_share, rank_and_world
from edgewise.patching import PatchableModel
from edgewise.prune_algos.loss import AnswerFunction, GradFunction, answer_loss, grad_values
from edgewise.types import AblationType, Edge, PruneScores

IGMode = Literal["all", "layer"]


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
) -> PruneScores:
    """Prune scores equal to the gradient of the loss with respect to the masks that
    interpolate every edge between its clean activation and its ablation.

    For each batch the clean prompt runs with every mask at ``mask_val`` (or, with
    ``integrated_grad_samples=N``, at each of ``0, 1/N, ..., 1`` in turn), patching from
    the ablation given by ``ablation_type`` and ``clean_corrupt``. The output at
    ``model.out_slice`` goes through ``grad_function`` and ``answer_function``; each
    mask's gradient is summed over batches and samples, in float32 (float64 for a float64
    model; never in a model's bfloat16/float16). That sum is the score.

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
        mask_val: the mask value of the forward pass. Exclusive with
            ``integrated_grad_samples``.
        integrated_grad_samples: number of interpolation steps ``N`` (``N + 1`` points).
        ablation_type: what ablated edges carry.
        clean_corrupt: which prompts per-batch ablations are computed from.
        integrated_grad_mode: ``"all"`` moves every mask together (as documented);
            ``"layer"`` interpolates one destination layer's masks at a time with every
            other mask at 0, so each edge's attribution is measured from the clean model.
        progress: show a progress bar.

    Returns:
        Destination module name -> scores shaped like its mask.
    """
    if (mask_val is None) == (integrated_grad_samples is None):
        raise ValueError(
            "pass exactly one of mask_val (e.g. mask_val=0.0 for edge attribution patching) "
            "and integrated_grad_samples (e.g. integrated_grad_samples=10); "
            f"got mask_val={mask_val!r}, integrated_grad_samples={integrated_grad_samples!r}"
        )
    if integrated_grad_samples is not None and integrated_grad_samples < 1:
        raise ValueError(f"integrated_grad_samples must be >= 1, got {integrated_grad_samples}")
    if integrated_grad_mode not in ("all", "layer"):
        raise ValueError(f"integrated_grad_mode must be 'all' or 'layer', got {integrated_grad_mode!r}")
    if ablation_type.mean_over_dataset:
        clean_corrupt = None
    # Data parallel under torch.distributed: rank r takes batches r, r + world, ...
    rank, world = rank_and_world()
    mine = my_share(dataloader)
    mean = src_ablations(model, dataloader, ablation_type) if ablation_type.mean_over_dataset else None

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

    dtype = score_dtype(model)
    scores = {n: torch.zeros(m.mask_shape, dtype=dtype, device=model.device)
              for n, m in model.dest_modules.items()}
    bar = tqdm(total=len(mine) * len(groups) * len(values), desc="mask gradients",
               disable=not progress or rank != 0)
    for batch in mine:
        # one batch's patches at a time (memory does not grow with the dataset); the
        # previous batch's are released first, so src_outs reuses their buffer
        patch = None
        patch = mean if mean is not None else batch_ablation(model, batch, ablation_type, clean_corrupt)
        for group in groups:
            for value in values:
                masks = model.new_masks(0.0, dtype=dtype)
                for name in group:
                    masks[name].fill_(value).requires_grad_(True)
                with model.patch(masks, patch, param_grads=False):
                    logits = model(batch.clean)[model.out_slice]
                loss = answer_loss(grad_values(logits, grad_function), batch, answer_function)
                if not bool(torch.isfinite(loss)):
                    raise FloatingPointError(
                        f"the loss of batch {batch.key} is {float(loss)} (mask value {value}); "
                        f"{_first_nonfinite_source(model, batch.clean)}. Check the model's dtype "
                        "(float16 overflows) and its inputs."
                    )
                grads = torch.autograd.grad(loss, [masks[n] for n in group])
                # one reduction (and sync) per step; the edge is looked for only on failure
                if not bool(torch.isfinite(torch.stack([g.sum() for g in grads])).all()):
                    check_finite(model, dict(zip(group, grads)), f"batch {batch.key}")
                for name, grad in zip(group, grads):
                    scores[name] += grad
                bar.update()
    bar.close()
    if world > 1:
        for name in scores:
            torch.distributed.all_reduce(scores[name])
    return scores


def _first_nonfinite_source(model: PatchableModel, tokens: torch.Tensor) -> str:
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


def score_dtype(model: PatchableModel) -> torch.dtype:
    """float32, or the model's dtype when that is wider (float64)."""
    return torch.promote_types(next(model.wrapped_model.parameters()).dtype, torch.float32)


def _module_layer(model: PatchableModel, module_name: str) -> int:
    return next(d.layer for d in model.dests if d.module_name == module_name)
