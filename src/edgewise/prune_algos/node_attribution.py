"""Node-level and neuron-level attribution scores: EAP and EAP-IG on inputs for whole
sources (the embedding, each attention head, each MLP) and for each dimension of a
source's output, as MIB's circuit track scores its node and neuron levels.

A *node* is a source of the graph; a *neuron* is one ``d_model`` dimension of a node's
output (MIB's convention, EAP-IG ``Graph.neurons_scores`` ``[n_forward, d_model]``:
not MLP hidden units, not head dimensions). With ``g_s = dL/d out_s`` (the gradient of
the loss at the node's output, which is the same for every head of one block) and
``delta_s = patch_s - clean_s``::

    neuron score [s, j] = sum over batches, prompts and positions of g_s[..., j] * delta_s[..., j]
    node score   [s]    = sum_j neuron score [s, j]

A node's output reaches the loss only through the destinations that read it, so the
node score is exactly the sum of the EAP scores of the node's outgoing edges.

EAP-IG on inputs averages ``g_s`` over ``m`` points on the straight path of input
embeddings from the corrupt prompt to the clean one (``k = 1..m``), as
:func:`~edgewise.prune_algos.eap_ig.eap_ig_inputs_prune_scores` does for edges.

Scores are ``{source module name: tensor}``: ``[n_heads]`` for a block's heads and
``[1]`` for the embedding or an MLP at node level, ``[n_heads | 1, d_model]`` at neuron
level (:data:`NodeScores`; :func:`flat_node_scores` lays them out in source order).

MIB's own code (hannamw/EAP-IG ``src/eap/attribute_node.py``, the version MIB pins)
takes an MLP's gradient at the MLP's *input* (``hook_mlp_in``), not its output, while
it takes heads' gradients at their outputs (``hook_result``) and the embedding's at
``hook_embed``. ``mlp_gradient="input"`` reproduces that; the default ``"output"`` is
the gradient at the node's output, the quantity the formula above describes.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from edgewise.checks import require_int
from edgewise.data import PromptDataLoader, checked_batches, require_full_prompts
from edgewise.data.checks import scoring_entry
from edgewise.patching.model import PatchableModel
from edgewise.prune_algos.loss import (
    AnswerFunction,
    GradFunction,
    answer_loss,
    check_loss_functions,
    grad_values,
)
from edgewise.runtime.ablation import CleanCorrupt, batch_ablation, src_ablations
from edgewise.types import AblationType, NodeLevel, NodeScores

NodeMethod = Literal["eap", "eap-ig-inputs"]
MlpGradient = Literal["output", "input"]

INPUT_HOOK = "blocks.0.hook_resid_pre"


@scoring_entry
def node_attribution_scores(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    method: NodeMethod = "eap",
    level: NodeLevel = "node",
    grad_function: GradFunction = "logit",
    answer_function: AnswerFunction = "avg_diff",
    ablation_type: AblationType = AblationType.RESAMPLE,
    clean_corrupt: CleanCorrupt | None = "corrupt",
    integrated_grad_samples: int = 5,
    mlp_gradient: MlpGradient = "output",
    progress: bool = True,
) -> NodeScores:
    """Score every node (or every neuron: dimension of a node's output) by attribution
    patching.

    Args:
        model: the patchable model (any graph: only its sources are scored).
        dataloader: clean / corrupt prompt pairs.
        method: ``"eap"`` (the gradient on the clean prompt) or ``"eap-ig-inputs"`` (the
            gradient averaged over ``integrated_grad_samples`` interpolated input
            embeddings; resample ablation from the corrupt prompts only, as in MIB).
        level: ``"node"`` (one score per source) or ``"neuron"`` (one per output dimension).
        grad_function, answer_function: the loss, as for edge attribution patching.
        ablation_type, clean_corrupt: what ``patch_s`` is (as for edge scores).
        integrated_grad_samples: ``m`` for ``"eap-ig-inputs"``.
        mlp_gradient: ``"output"`` (the gradient at the MLP's output) or ``"input"``
            (at its input ``hook_mlp_in``, as MIB's EAP-IG code computes it).
        progress: show a progress bar.

    Returns:
        :data:`NodeScores`: ``{source module: [n]}`` or ``{source module: [n, d_model]}``,
        summed over batches (each batch's loss is its mean), in ``model.score_dtype``.
    """
    check_loss_functions(grad_function, answer_function)
    ablation_type = AblationType(ablation_type)
    if method not in ("eap", "eap-ig-inputs"):
        raise ValueError(f"method must be 'eap' or 'eap-ig-inputs', got {method!r}")
    if level not in ("node", "neuron"):
        raise ValueError(f"level must be 'node' or 'neuron', got {level!r}")
    if mlp_gradient not in ("output", "input"):
        raise ValueError(
            f"mlp_gradient must be 'output' or 'input' (MIB's EAP-IG code), got {mlp_gradient!r}"
        )
    ig = method == "eap-ig-inputs"
    if ig and (ablation_type != AblationType.RESAMPLE or clean_corrupt != "corrupt"):
        raise ValueError(
            "EAP-IG on inputs interpolates from the corrupt prompt to the clean one, so it "
            f"patches from the corrupt prompts (resample); got ablation_type={ablation_type.value!r}, "
            f"clean_corrupt={clean_corrupt!r}. Use method='eap' for other ablations."
        )
    steps = require_int(integrated_grad_samples, "integrated_grad_samples", 1) if ig else 1
    require_full_prompts(dataloader, model, ablation_type)
    if ablation_type.mean_over_dataset:
        clean_corrupt = None
    from_corrupt = ablation_type == AblationType.RESAMPLE and clean_corrupt == "corrupt"
    batches = checked_batches(
        model, dataloader, "node_attribution_scores", answer_function, from_corrupt
    )
    mean = (
        src_ablations(model, dataloader, ablation_type) if ablation_type.mean_over_dataset else None
    )
    dtype, d = model.score_dtype, int(model.cfg.d_model)
    neuron = {m.module_name: torch.zeros(m.n_heads or 1, d, dtype=dtype, device=model.device)
              for m in model.graph.src_modules}  # fmt: skip
    points = _grad_points(model, mlp_gradient)
    bar = tqdm(total=len(batches) * steps, desc=f"{method} {level}s", disable=not progress)
    for batch in batches:
        if ig and batch.clean.shape != batch.corrupt.shape:
            raise ValueError(
                "EAP-IG on inputs interpolates the clean and corrupt embeddings position by "
                f"position, so their token lengths must match; got clean {tuple(batch.clean.shape)}"
                f" and corrupt {tuple(batch.corrupt.shape)}. Pad the prompts to one length."
            )
        patch = (
            mean if mean is not None else batch_ablation(model, batch, ablation_type, clean_corrupt)
        )
        clean_src = model.src_outs(batch.clean)
        delta = (patch - clean_src).to(dtype)  # [n_srcs, batch, seq, d_model]
        x_clean = model.output_at(INPUT_HOOK, batch.clean)  # the embeddings [batch, seq, d_model]
        x_corrupt = model.output_at(INPUT_HOOK, batch.corrupt) if ig else x_clean
        for k in range(1, steps + 1):
            x = x_corrupt + (k / steps) * (x_clean - x_corrupt) if ig else x_clean
            grads = _output_grads(model, batch, x, points, grad_function, answer_function)
            for mod in model.graph.src_modules:
                g = grads[mod.module_name].to(dtype)  # [batch, seq, d_model]
                rows = delta[mod.src_lo : mod.src_hi]  # [n, batch, seq, d_model]
                neuron[mod.module_name] += torch.einsum("bpd,nbpd->nd", g, rows) / steps
            bar.update()
    bar.close()
    if level == "neuron":
        return neuron
    return {name: s.sum(-1) for name, s in neuron.items()}


def _grad_points(model: PatchableModel, mlp_gradient: MlpGradient) -> dict[str, str]:
    """Source module -> the hook whose output's gradient is the source's output gradient:
    the block's attention output for its heads (``attn_out = sum_h result_h + b_O``, so
    every head shares it), ``hook_mlp_out`` (or the MLP's input destination) for an MLP,
    the input embeddings for the embedding."""
    points: dict[str, str] = {}
    mlp_inputs = {dh.module.block: dh.point for dh in model.dest_hooks if dh.module.kind == "mlp"}
    has_mlp = any(m.kind == "mlp" for m in model.graph.src_modules)
    if mlp_gradient == "input" and has_mlp and not mlp_inputs:
        raise ValueError("mlp_gradient='input' reads the gradient at the MLP input destinations, "
                         "which only a factorized graph has: wrap the model with factorized=True")  # fmt: skip
    for mod in model.graph.src_modules:
        if mod.kind == "embed":
            points[mod.module_name] = INPUT_HOOK
            continue
        if mod.kind == "attn":
            name = f"blocks.{mod.block}.hook_attn_out"
        elif mlp_gradient == "input":
            name = mlp_inputs[mod.block]
        else:
            name = mod.module_name
        point = model.adapter.resolve(name)
        if point is None:
            raise ValueError(f"{type(model.wrapped_model).__name__} has no hook {name}, where the "
                             f"gradient of {mod.module_name}'s output is read")  # fmt: skip
        points[mod.module_name] = point
    return points


def _output_grads(
    model: PatchableModel,
    batch: Any,
    x: torch.Tensor,
    points: dict[str, str],
    grad_function: GradFunction,
    answer_function: AnswerFunction,
) -> dict[str, torch.Tensor]:
    """One forward pass on ``batch.clean`` with the input embeddings replaced by ``x``
    ``[batch, seq, d_model]``; the loss's gradient at each point's output
    ``{source module: [batch, seq, d_model]}``. Each non-input point adds a zero leaf to
    its output (the same forward pass) and the gradient is taken at that leaf: it is the
    gradient of that output alone, also where a hook's output aliases another tensor."""
    leaves: dict[str, torch.Tensor] = {}
    x_leaf = x.detach().clone().requires_grad_(True)
    hooks: list[tuple[str, Any]] = [(INPUT_HOOK, _replace(x_leaf))]
    for point in sorted(set(points.values()) - {INPUT_HOOK}):
        hooks.append((point, _add_leaf(leaves, point)))
    with torch.enable_grad(), model.hooks(hooks):
        logits = model(batch.clean)[model.out_slice]
        loss = answer_loss(grad_values(logits, grad_function), batch, answer_function)
        names = sorted(leaves)
        got = torch.autograd.grad(loss, [x_leaf] + [leaves[n] for n in names], allow_unused=True)
    silent = set(points.values()) - {INPUT_HOOK} - set(leaves)
    if silent:
        raise RuntimeError(f"hooks {sorted(silent)} did not fire in the forward pass, so the "
                           "gradients of the outputs they carry cannot be read")  # fmt: skip
    by_point = {INPUT_HOOK: got[0]} | dict(zip(names, got[1:]))
    out = {}
    for src, point in points.items():
        g = by_point[point]
        out[src] = torch.zeros_like(x) if g is None else g  # not reaching the loss: 0
    return out


def _replace(x: torch.Tensor):
    def hook(_m: nn.Module, _i: Any, _out: torch.Tensor) -> torch.Tensor:
        return x

    return hook


def _add_leaf(leaves: dict[str, torch.Tensor], point: str):
    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
        leaf = torch.zeros_like(out, requires_grad=True)
        leaves[point] = leaf
        return out + leaf

    return hook


def flat_node_scores(model: PatchableModel, scores: NodeScores) -> torch.Tensor:
    """Scores in source order: ``[n_srcs]`` (node level) or ``[n_srcs, d_model]``
    (neuron level), row ``i`` for ``model.srcs[i]`` (MIB's forward-index order: input,
    then per block its heads and its MLP)."""
    return torch.cat([scores[m.module_name] for m in model.graph.src_modules])
