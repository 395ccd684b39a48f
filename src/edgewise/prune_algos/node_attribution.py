"""Node-level and neuron-level attribution scores: EAP, EAP-IG on inputs and EAP-IG on
activations for whole sources (the embedding, each attention head, each MLP) and for each
dimension of a source's output, as MIB's circuit track scores its node and neuron levels.

A *node* is a source of the graph; a *neuron* is one ``d_model`` dimension of a node's
output (MIB's convention, EAP-IG ``Graph.neurons_scores`` ``[n_forward, d_model]``:
not MLP hidden units, not head dimensions). With ``g_s`` the gradient of the loss read
for node ``s`` and ``delta_s = patch_s - clean_s``::

    neuron score [s, j] = sum over batches, prompts and positions of g_s[..., j] * delta_s[..., j]
    node score   [s]    = sum_j neuron score [s, j]

divided by the number of prompts by default (``scale="mean"``, MIB's; ``"sum"`` keeps
the sum over batches of each batch's mean-loss attribution, :mod:`edgewise.io.scale`).

Where ``g_s`` is read (``mlp_gradient``): MIB's code (hannamw/EAP-IG
``src/eap/attribute_node.py``, ``make_hooks_and_matrices``, at the commit MIB pins) reads
a head's gradient at its output (``hook_result``; every head of a block shares
``dL/d hook_attn_out``), the embedding's at ``hook_embed`` and an MLP's at the MLP's
*input* (``hook_mlp_in``), not its output. ``mlp_gradient="input"`` (default) is that;
``"output"`` reads the MLP's gradient at ``hook_mlp_out``, the quantity whose product
with ``delta_s`` is first-order attribution of the node. With ``"output"`` a node's score
is exactly the sum of the EAP scores of its outgoing edges.

Methods (``method``), each as ``attribute_node.py`` computes it:

* ``"eap"``: ``g_s`` on the clean prompt (``get_scores_eap``).
* ``"eap-ig-inputs"``: ``g_s`` averaged over ``m`` passes whose input embeddings lie on
  the straight path from the corrupt prompt to the clean one, ``x_k = x_corrupt +
  k/m (x_clean - x_corrupt)`` at ``k = 1..m`` (``get_scores_eap_ig``: at node level MIB
  takes ``k = 1..m``, while its edge-level EAP-IG takes ``k = 0..m-1``;
  ``endpoint="corrupt"`` gives ``k = 0..m-1`` here too). Resample ablation only.
* ``"eap-ig-activations"``: for each source module ``n`` (the embeddings, each block's
  attention output with all its heads together, each MLP) and ``k = 1..m``, one pass of
  the clean prompt with ``n``'s output replaced by the constant ``clean_n + (1 - k/m)
  (ablated_n - clean_n)``; every node's ``g_s`` from every pass is averaged over the
  ``|N| m`` passes (``get_scores_ig_activations``). Being a constant, the moved output
  passes no gradient back to what computed it: in the pass that moves an MLP, that MLP's
  gradient read at its input is 0.

Scores are ``{source module name: tensor}``: ``[n_heads]`` for a block's heads and
``[1]`` for the embedding or an MLP at node level, ``[n_heads | 1, d_model]`` at neuron
level (:data:`NodeScores`; :func:`flat_node_scores` lays them out in source order).

Where edgewise differs from that code: it reads the embedding's output at
``blocks.0.hook_resid_pre`` (token plus position embeddings) where MIB reads
``hook_embed`` (tokens only); the gradients are the same, and so is ``delta`` for resample
ablation of prompts of one length, but not for zero or mean ablation of the input node.
For mean ablations MIB's EAP-IG on activations moves each output towards 0 (its buffer of
corrupt activations is never filled) while multiplying by ``mean - clean``; here the path
ends at the ablation itself.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from edgewise.io.scale import Scale, apply_scale, check_scale, count_prompts
from edgewise.patching.model import PatchableModel
from edgewise.prune_algos.eap_ig_activations import (
    module_output_hook,
    modules_to_move,
    moved_output_hook,
)
from edgewise.prune_algos.loss import (
    AnswerFunction,
    GradFunction,
    answer_loss,
    check_loss_functions,
    grad_values,
)
from edgewise.runtime.ablation import (
    CleanCorrupt,
    batch_ablation,
    check_ablation_values,
    src_ablations,
)
from edgewise.types import AblationType, NodeLevel, NodeScores

NodeMethod = Literal["eap", "eap-ig-inputs", "eap-ig-activations"]
NODE_METHODS: tuple[str, ...] = ("eap", "eap-ig-inputs", "eap-ig-activations")
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
    mlp_gradient: MlpGradient = "input",
    progress: bool = True,
    ablation_values: torch.Tensor | None = None,
    scale: Scale = "mean",
    endpoint: Literal["clean", "corrupt"] = "clean",
) -> NodeScores:
    """Score every node (or every neuron: dimension of a node's output) by attribution
    patching; by default exactly as MIB's reference code does (see the module doc).

    Args:
        model: the patchable model (any graph: only its sources are scored; the default
            ``mlp_gradient="input"`` needs a factorized one).
        dataloader: clean / corrupt prompt pairs.
        method: ``"eap"`` (the gradient on the clean prompt), ``"eap-ig-inputs"`` (the
            gradient averaged over ``integrated_grad_samples`` interpolated input
            embeddings; resample ablation from the corrupt prompts only, as in MIB) or
            ``"eap-ig-activations"`` (averaged over passes that each move one module's
            output from its ablated to its clean value).
        level: ``"node"`` (one score per source) or ``"neuron"`` (one per output dimension).
        grad_function, answer_function: the loss, as for edge attribution patching.
        ablation_type, clean_corrupt: what ``patch_s`` is (as for edge scores).
        integrated_grad_samples: ``m`` for the two EAP-IG methods (MIB's ``--ig-steps``).
        mlp_gradient: ``"input"`` (default: at the MLP's input ``hook_mlp_in``, where
            MIB's code reads it) or ``"output"`` (at the MLP's output).
        progress: show a progress bar.
        ablation_values: for ``"eap"``, instead of ``ablation_type``, fixed patch
            activations ``[n_srcs, 1, 1 | seq, d_model]`` shared by every prompt (MIB's
            optimal ablation: ``patch_s`` is the source's optimal constant). EAP-IG on
            inputs refuses them, as MIB does.
        scale: ``"mean"`` (default, MIB's): the sum over batches divided by the number of
            prompts; ``"sum"``: not divided (:mod:`edgewise.io.scale`).
        endpoint: for ``"eap-ig-inputs"``, which end of the path is among the ``m``
            points: ``"clean"`` (default, ``k = 1..m``, MIB's node level) or
            ``"corrupt"`` (``k = 0..m-1``, MIB's edge level).

    Returns:
        :data:`NodeScores`: ``{source module: [n]}`` or ``{source module: [n, d_model]}``
        in ``model.score_dtype``.
    """
    check_loss_functions(grad_function, answer_function)
    scale = check_scale(scale)
    ablation_type = AblationType(ablation_type)
    if method not in NODE_METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, NODE_METHODS))}, got {method!r}")
    if level not in ("node", "neuron"):
        raise ValueError(f"level must be 'node' or 'neuron', got {level!r}")
    if mlp_gradient not in ("output", "input"):
        raise ValueError(
            f"mlp_gradient must be 'input' (MIB's EAP-IG code) or 'output', got {mlp_gradient!r}"
        )
    if endpoint not in ("clean", "corrupt"):
        raise ValueError(f"endpoint must be 'clean' (k = 1..m) or 'corrupt' (k = 0..m-1), got {endpoint!r}")
    ig_inputs = method == "eap-ig-inputs"
    if ig_inputs and ablation_values is not None:
        raise ValueError(
            "EAP-IG on inputs interpolates from the corrupt prompt to the clean one, so it "
            "patches from the corrupt prompts only (MIB refuses other interventions for it "
            "too); use method='eap' or 'eap-ig-activations' with ablation_values"
        )
    if ig_inputs and (ablation_type != AblationType.RESAMPLE or clean_corrupt != "corrupt"):
        raise ValueError(
            "EAP-IG on inputs interpolates from the corrupt prompt to the clean one, so it "
            f"patches from the corrupt prompts (resample); got ablation_type={ablation_type.value!r}, "
            f"clean_corrupt={clean_corrupt!r}. Use method='eap' or 'eap-ig-activations' for "
            "other ablations."
        )
    m = 1 if method == "eap" else require_int(integrated_grad_samples, "integrated_grad_samples", 1)
    moved = modules_to_move(model, None) if method == "eap-ig-activations" else [None]
    require_full_prompts(dataloader, model, ablation_type)
    fixed = None if ablation_values is None else check_ablation_values(model, ablation_values, ablation_type)
    if ablation_type.mean_over_dataset or fixed is not None:
        clean_corrupt = None
    from_corrupt = ablation_type == AblationType.RESAMPLE and clean_corrupt == "corrupt"
    batches = checked_batches(
        model, dataloader, "node_attribution_scores", answer_function, from_corrupt,
        right_padded=True,
    )
    refuse_padded_means(batches, ablation_type, "node_attribution_scores")
    mean = (
        src_ablations(model, dataloader, ablation_type) if ablation_type.mean_over_dataset else fixed
    )
    points = _grad_points(model, mlp_gradient)
    dtype, d = model.score_dtype, int(model.cfg.d_model)
    neuron = {mod.module_name: torch.zeros(mod.n_heads or 1, d, dtype=dtype, device=model.device)
              for mod in model.graph.src_modules}  # fmt: skip
    passes = len(moved) * m
    bar = tqdm(total=len(batches) * passes, desc=f"{method} {level}s", disable=not progress)
    for batch in batches:
        if ig_inputs and batch.clean.shape != batch.corrupt.shape:
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
        x_corrupt = model.output_at(INPUT_HOOK, batch.corrupt) if ig_inputs else None
        for module in moved:
            # the moved module's step from clean to ablated [batch, seq, d_model]
            step = None if module is None else delta[module.src_lo : module.src_hi].sum(0)
            ks = range(0, m) if ig_inputs and endpoint == "corrupt" else range(1, m + 1)
            for k in ks:
                x, hooks = x_clean, []
                if x_corrupt is not None:  # EAP-IG on inputs
                    x = x_corrupt + (k / m) * (x_clean - x_corrupt)
                elif module is not None and module.kind == "embed":
                    x = x_clean + (1.0 - k / m) * step.to(x_clean.dtype)
                elif module is not None:
                    hooks = [(module_output_hook(module), moved_output_hook(step, 1.0 - k / m))]
                grads = _output_grads(model, batch, x, points, grad_function, answer_function,
                                      hooks)  # fmt: skip
                for mod in model.graph.src_modules:
                    g = grads[mod.module_name].to(dtype)  # [batch, seq, d_model]
                    rows = delta[mod.src_lo : mod.src_hi]  # [n, batch, seq, d_model]
                    neuron[mod.module_name] += torch.einsum("bpd,nbpd->nd", g, rows) / passes
                bar.update()
    bar.close()
    out = neuron if level == "neuron" else {name: s.sum(-1) for name, s in neuron.items()}
    return apply_scale(out, scale, count_prompts(batches))


def _grad_points(model: PatchableModel, mlp_gradient: MlpGradient) -> dict[str, str]:
    """Source module -> the hook whose output's gradient is the source's output gradient:
    the block's attention output for its heads (``attn_out = sum_h result_h + b_O``, so
    every head shares it), ``hook_mlp_out`` (or the MLP's input destination) for an MLP,
    the input embeddings for the embedding."""
    points: dict[str, str] = {}
    mlp_inputs = {dh.module.block: dh.point for dh in model.dest_hooks if dh.module.kind == "mlp"}
    has_mlp = any(m.kind == "mlp" for m in model.graph.src_modules)
    if mlp_gradient == "input" and has_mlp and not mlp_inputs:
        raise ValueError("mlp_gradient='input' (the default, MIB's) reads the gradient at the MLP "
                         "input destinations, which only a factorized graph has: wrap the model "
                         "with factorized=True, or pass mlp_gradient='output'")  # fmt: skip
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
    replace: Sequence[tuple[str, Any]] = (),
) -> dict[str, torch.Tensor]:
    """One forward pass on ``batch.clean`` with the input embeddings replaced by ``x``
    ``[batch, seq, d_model]`` and the hooks ``replace`` (hook name, fn: another
    module's output replaced) entered next; the loss's gradient at each point's output
    ``{source module: [batch, seq, d_model]}``. Each non-input point adds a zero leaf to
    its output (the same forward pass, after any replacement there) and the gradient is
    taken at that leaf: it is the gradient of that output alone, also where a hook's
    output aliases another tensor."""
    leaves: dict[str, torch.Tensor] = {}
    x_leaf = x.detach().clone().requires_grad_(True)
    hooks: list[tuple[str, Any]] = [(INPUT_HOOK, _replace(x_leaf)), *replace]
    for point in sorted(set(points.values()) - {INPUT_HOOK}):
        hooks.append((point, _add_leaf(leaves, point)))
    with torch.enable_grad(), model.hooks(hooks):
        logits = model.outputs(batch.clean, batch.lengths)
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
