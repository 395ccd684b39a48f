"""auto-circuit's subnetwork probing, with its signature, defaults and numbers.

Every edge has a mask logit ``theta``. Each training step turns the logits into masks
(``mask_fn``): a hard-concrete sample drawn afresh for every prompt, ``sigmoid(theta)``,
or ``theta`` itself; runs the circuit with every edge mixed by its mask (1: patched);
and takes one Adam step on::

    faithfulness_term + regularize_lambda * regularize

``regularize`` is the masks' count of kept edges over the number of edges (over
``circuit_size`` with a target size, counting only what exceeds it), plus the
``avoid_edges`` penalty. With hard-concrete masks the count is itself one sample, as in
auto-circuit. Scores are the final logits, shifted so that the lowest is 0 (negated
in tree mode, where a high logit means "ablate").

Two modes:

* edge mode (default): the corrupt prompts run, and a mask of 1 restores the edge's
  clean value (a resample ablation from the clean prompts). The masks start near 0, so
  the circuit starts nearly empty and the penalty counts the restored edges.
* tree mode (``tree_optimisation=True``): the clean prompts run, and a mask of 1
  ablates the edge with the token-wise mean of the corrupt prompts. The masks start
  near 1 and the penalty counts the edges left in.

auto-circuit 1.0.1 patches token-wise corrupt means in edge mode too, so that the clean
prompts never reach the circuit; ``ablation_type=AblationType.TOKENWISE_MEAN_CORRUPT``
reproduces those numbers (see ``docs/auto_circuit.md``). edgewise's own
:func:`~edgewise.prune_algos.learned_masks.learned_mask_prune_scores` is the same idea
with one seeded mask per batch and scores that are keep probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from edgewise.checks import require_int, require_real
from edgewise.data import PromptDataLoader, PromptPairBatch, checked_batches
from edgewise.data.checks import scoring_entry
from edgewise.evaluation.circuits import prune_scores_threshold
from edgewise.metrics.answers import _mean_gather, batch_answer_diffs, top_answer_correct
from edgewise.patching.model import PatchableModel
from edgewise.prune_algos.learned_masks import _L0_SHIFT, _LEFT, _RIGHT, _TEMP, adam_step
from edgewise.runtime.ablation import batch_src_ablations
from edgewise.types import AblationType, BatchKey, Edge, PruneScores

SP = "Subnetwork Probing"
SP_FAITHFULNESS_TARGET = Literal[
    "kl_div", "mse", "answer", "wrong_answer", "correct_percent", "logit_diff_percent"
]
SPMaskFn = Literal["hard_concrete", "sigmoid"] | None

# the initial mask logit: a hard-concrete keep probability of 0.9 (Cao et al.)
mask_p = 0.9
_p = (mask_p - _LEFT) / (_RIGHT - _LEFT)
init_mask_val = math.log(_p / (1 - _p))
regularize_const = _L0_SHIFT


def sample_hard_concrete(theta: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """One hard-concrete sample per element of ``theta`` (any shape), noise ``u``
    clamped to ``[1e-4, 1 - 1e-4]``, stretched to ``[-0.1, 1.1]``, clipped to ``[0, 1]``.
    ``gen=None`` draws from torch's global generator."""
    u = torch.empty_like(theta).uniform_(generator=gen).clamp(0.0001, 0.9999)
    s = torch.sigmoid((u.log() - (1 - u).log() + theta) / _TEMP)
    return (s * (_RIGHT - _LEFT) + _LEFT).clamp(0.0, 1.0)


def _masks(theta: dict[str, torch.Tensor], mask_fn: SPMaskFn, n_prompts: int,
           gen: torch.Generator | None) -> dict[str, torch.Tensor]:  # fmt: skip
    """The masks of one step: ``[n_prompts, *mask_shape]`` samples (hard-concrete),
    else ``[*mask_shape]``."""
    if mask_fn == "hard_concrete":
        return {n: sample_hard_concrete(t.expand(n_prompts, *t.shape), gen) for n, t in theta.items()}
    if mask_fn == "sigmoid":
        return {n: torch.sigmoid(t) for n, t in theta.items()}
    return dict(theta)


def _faithfulness(target: str, logits: torch.Tensor, clean: torch.Tensor, batch: PromptPairBatch) -> torch.Tensor:
    """The term that pulls the circuit towards the full model (lower is better)."""
    if target == "kl_div":
        logp, ref = F.log_softmax(logits, -1), F.log_softmax(clean, -1)
        return F.kl_div(logp, ref, reduction="sum", log_target=True) / math.prod(logits.shape[:-1])
    if target == "mse":
        return F.mse_loss(logits, clean)
    if target == "correct_percent":  # no gradient: only the penalty trains
        return -top_answer_correct(logits, batch).mean().to(logits.dtype)
    if target == "logit_diff_percent":
        percent = batch_answer_diffs(logits, batch) / batch_answer_diffs(clean, batch) * 100
        return (100 - percent).abs().mean()
    if target in ("answer", "wrong_answer"):
        answers = batch.wrong_answers if target == "wrong_answer" else batch.answers
        return -_mean_gather(logits, answers).mean()
    raise ValueError(f"faithfulness_target must be one of {SP_FAITHFULNESS_TARGET.__args__}, got {target!r}")


@scoring_entry
def subnetwork_probing_prune_scores(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    official_edges: set[Edge] | None = None,
    learning_rate: float = 0.1,
    epochs: int = 20,
    regularize_lambda: float = 10,
    mask_fn: SPMaskFn = "hard_concrete",
    dropout_p: float = 0.0,
    init_val: float = init_mask_val,
    show_train_graph: bool = False,
    circuit_size: int | None = None,
    tree_optimisation: bool = False,
    avoid_edges: set[Edge] | None = None,
    avoid_lambda: float = 1.0,
    faithfulness_target: SP_FAITHFULNESS_TARGET = "kl_div",
    validation_dataloader: PromptDataLoader | None = None,
    ablation_type: AblationType | None = None,
    seed: int | None = None,
    progress: bool = True,
) -> PruneScores:
    """Learn edge masks that keep the circuit faithful with few edges (module doc).

    Args:
        model, dataloader: the patchable model and its prompt pairs.
        official_edges: unused (the common signature of scoring functions).
        learning_rate, epochs: Adam on the mask logits, one step per batch per epoch.
        regularize_lambda: weight of the edge-count penalty.
        mask_fn: ``"hard_concrete"`` (one sample per prompt and step), ``"sigmoid"``,
            or ``None`` (the logits are the masks).
        dropout_p: dropout applied to the masks during training (0: none).
        init_val: magnitude of the initial logits (``-init_val`` in edge mode,
            ``+init_val`` in tree mode); the default is a keep probability of 0.9.
        show_train_graph: show a plotly figure of the loss terms per step.
        circuit_size: a target size: the penalty counts only edges beyond it.
        tree_optimisation: tree mode (clean run, masks ablate) instead of edge mode.
        avoid_edges, avoid_lambda: an extra penalty, of total weight ``avoid_lambda``, on
            these edges being in the circuit.
        faithfulness_target: ``"kl_div"`` to the full model's outputs, ``"mse"`` between
            the circuit's and the full model's logits, ``"answer"`` / ``"wrong_answer"``
            (raise the mean logit of the answers / wrong answers), ``"correct_percent"``
            (top-1 accuracy; no gradient) or ``"logit_diff_percent"`` (``|100 -``
            logit difference as a percent of the full model's``|``).
        validation_dataloader: also track the logit difference percent on these prompts
            (shown in the train graph).
        ablation_type: the patches. Default: the clean prompts' values in edge mode,
            the token-wise corrupt mean in tree mode.
        seed: seeds the hard-concrete noise and dropout; ``None`` draws from torch's
            global generator, as auto-circuit does (same global seed, same numbers).
        progress: show a progress bar.

    Returns:
        Destination module name -> scores shaped like its mask (higher: more needed).
    """
    epochs = require_int(epochs, "epochs", 0)
    dropout_p = require_real(dropout_p, "dropout_p", 0.0, 1.0, open_high=True,
                             meaning="the probability of dropping a mask")
    learning_rate = require_real(learning_rate, "learning_rate", 0.0, open_low=True)
    ablation_type = None if ablation_type is None else AblationType(ablation_type)
    # resample patches come from the clean run in edge mode: identical pairs change nothing
    checked_batches(model, dataloader, "subnetwork_probing_prune_scores", None,
                    ablation_type in (None, AblationType.RESAMPLE))  # fmt: skip
    if mask_fn not in ("hard_concrete", "sigmoid", None):
        raise ValueError(f"mask_fn must be 'hard_concrete', 'sigmoid' or None, got {mask_fn!r}")
    if faithfulness_target not in SP_FAITHFULNESS_TARGET.__args__:
        raise ValueError(f"faithfulness_target must be one of {SP_FAITHFULNESS_TARGET.__args__}, "
                         f"got {faithfulness_target!r}")  # fmt: skip
    tree = tree_optimisation
    gen = None if seed is None else torch.Generator(model.device).manual_seed(seed)
    if ablation_type is None:
        ablation_type = AblationType.TOKENWISE_MEAN_CORRUPT if tree else AblationType.RESAMPLE
    patches = batch_src_ablations(model, dataloader, ablation_type, "corrupt" if tree else "clean")
    val_batches = list(validation_dataloader or [])
    with torch.inference_mode():
        clean: dict[BatchKey, torch.Tensor] = {b.key: model.outputs(b.clean) for b in dataloader}
        val_clean = {b.key: F.log_softmax(model.outputs(b.clean), -1)
                     for b in val_batches}  # fmt: skip
    val_patches = (batch_src_ablations(model, validation_dataloader, ablation_type,
                                       "corrupt" if tree else "clean")
                   if validation_dataloader is not None else {})  # fmt: skip
    dtype = model.dtype
    theta = {n: torch.full(m.mask_shape, init_val if tree else -init_val, dtype=dtype,
                           device=model.device, requires_grad=True)
             for n, m in model.dest_modules.items()}  # fmt: skip
    optim = torch.optim.Adam(list(theta.values()), lr=learning_rate)
    n_edges = model.n_edges
    avoid = list(avoid_edges or [])
    avoid_weight = (-1 if tree else 1) * avoid_lambda / max(len(avoid), 1)
    avoid_shift = regularize_const if mask_fn == "hard_concrete" else 0.0
    history: dict[str, list[float]] = {"Loss": [], faithfulness_target.title(): [], "Regularization": [],
                                       "Val Logit Diff Percent": []}  # fmt: skip
    bar = tqdm(range(epochs), desc=SP, disable=not progress)
    for _ in bar:
        for i, batch in enumerate(dataloader):
            n_prompts = batch.clean.shape[0]
            masks = _masks(theta, mask_fn, n_prompts, gen)
            if dropout_p > 0:
                masks = {n: _dropout(m, dropout_p, gen) for n, m in masks.items()}
            with model.patch(masks, patches[batch.key], param_grads=False):
                logits = model.outputs(batch.clean if tree else batch.corrupt)
            faithful = _faithfulness(faithfulness_target, logits, clean[batch.key], batch)
            flat = torch.cat([t.flatten() for t in theta.values()])
            kept = _masks({"all": flat[None]}, mask_fn, 1, gen)["all"].sum() if mask_fn else flat.sum()
            n_mask = n_edges - kept if tree else kept
            if circuit_size:
                n_mask = F.relu(n_mask - circuit_size)
            regularize = n_mask / (circuit_size if circuit_size else n_edges)
            for e in avoid:
                logit = theta[e.dest.module_name][e.patch_idx]
                regularize = regularize + avoid_weight * (torch.sigmoid(logit - avoid_shift) if mask_fn else logit)
            loss = faithful + regularize * regularize_lambda
            adam_step(optim, loss)
            history["Loss"].append(loss.item())
            history[faithfulness_target.title()].append(faithful.item())
            history["Regularization"].append(regularize.item() * regularize_lambda)
            if validation_dataloader is not None:
                history["Val Logit Diff Percent"].append(
                    _validate(model, val_batches, i, theta, mask_fn, gen, tree, val_clean, val_patches))
            bar.set_postfix(loss=history["Loss"][-1], refresh=False)
    if show_train_graph:
        import plotly.graph_objects as go

        fig = go.Figure([go.Scatter(y=ys, name=name) for name, ys in history.items() if ys])
        fig.update_layout(title=SP, xaxis_title="Step")
        fig.show()
    with torch.no_grad():
        extreme = (max(float(t.max()) for t in theta.values()) if tree
                   else min(float(t.min()) for t in theta.values()))  # fmt: skip
        sign = -1 if tree else 1
        return {n: abs(extreme) + sign * t.detach().clone() for n, t in theta.items()}


def _dropout(mask: torch.Tensor, p: float, gen: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout on the masks (noise from ``gen``)."""
    keep = torch.empty_like(mask).bernoulli_(1 - p, generator=gen)
    return mask * keep / (1 - p)


def _validate(model: PatchableModel, batches: list[PromptPairBatch], i: int, theta: dict[str, torch.Tensor],
              mask_fn: SPMaskFn, gen: torch.Generator | None, tree: bool,
              clean: dict[BatchKey, torch.Tensor], patches: dict[BatchKey, torch.Tensor]) -> float:  # fmt: skip
    """Mean logit difference percent of the current circuit on validation batch ``i``
    (the first batch when there are fewer)."""
    batch = batches[i] if i < len(batches) else batches[0]
    with torch.no_grad():
        masks = _masks(theta, mask_fn, batch.clean.shape[0], gen)
        with model.patch(masks, patches[batch.key], param_grads=False):
            logits = model.outputs(batch.clean if tree else batch.corrupt)
        percent = batch_answer_diffs(F.log_softmax(logits, -1), batch) / batch_answer_diffs(clean[batch.key], batch)
        return float(100 * percent.mean())


@scoring_entry
def circuit_probing_prune_scores(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    official_edges: set[Edge] | None = None,
    learning_rate: float = 0.1,
    epochs: int = 20,
    regularize_lambda: float = 10,
    mask_fn: SPMaskFn = "hard_concrete",
    dropout_p: float = 0.0,
    init_val: float = -init_mask_val,
    show_train_graph: bool = False,
    circuit_sizes: Sequence[int | Literal["true_size"]] = ("true_size",),
    tree_optimisation: bool = False,
    avoid_edges: set[Edge] | None = None,
    avoid_lambda: float = 1.0,
    faithfulness_target: SP_FAITHFULNESS_TARGET = "kl_div",
    validation_dataloader: PromptDataLoader | None = None,
    ablation_type: AblationType | None = None,
    seed: int | None = None,
    progress: bool = True,
) -> PruneScores:
    """Subnetwork probing with a target size, once per size in ``circuit_sizes``
    (``"true_size"``: the number of ``official_edges``), smallest first. An edge scores
    ``len(sizes) - i`` for the smallest size ``sizes[i]`` whose circuit (its top
    ``sizes[i]`` scores) holds it, and 0 when no circuit does. The other arguments are
    those of :func:`subnetwork_probing_prune_scores`, passed on for every size.
    """
    sizes = []
    for size in circuit_sizes:
        if size == "true_size":
            if official_edges is None:
                raise ValueError('circuit_sizes has "true_size" but official_edges is None: '
                                 "pass the official circuit's edges or give sizes as numbers")  # fmt: skip
            size = len(official_edges)
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"circuit_sizes must be positive integers or 'true_size', got {size!r}")
        sizes.append(size)
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"circuit_sizes must be distinct, got {sizes}")
    scores = model.new_prune_scores()
    for i, size in enumerate(sorted(sizes)):
        new = subnetwork_probing_prune_scores(
            model, dataloader, official_edges, learning_rate, epochs, regularize_lambda, mask_fn,
            dropout_p, init_val, show_train_graph, size, tree_optimisation, avoid_edges, avoid_lambda,
            faithfulness_target, validation_dataloader, ablation_type, seed, progress,
        )
        threshold = prune_scores_threshold(new, size)
        for name, s in new.items():
            inside = (s >= threshold) & (scores[name] == 0)  # a smaller circuit keeps its score
            scores[name] = torch.where(inside, float(len(sizes) - i), scores[name])
    return scores
