"""Node-level and neuron-level circuits, and the model's output with only such a circuit
intact (MIB's node and neuron levels).

A node circuit keeps some sources (the embedding, heads, MLPs); a neuron circuit keeps
some ``d_model`` dimensions of each source's output. Everything outside the circuit is
ablated for *every* reader: an ablated node's output is replaced by its ablation (the
corrupt run's output, or a mean) in every destination that reads it (later heads' Q/K/V,
MLPs, the logits), and an ablated neuron only in its own dimension. That is MIB's
evaluation (hannamw/EAP-IG ``src/eap/evaluate.py`` with ``Graph.apply_topn`` at level
``node``/``neuron``): the edges out of an ablated node are patched; the edges from kept
nodes into ablated ones are patched too there, which changes nothing, since an ablated
node's output is replaced wherever it is read, so here they are left alone. The input
embedding is a node like any other (MIB scores it), and the logits always read the kept
nodes. The empty circuit is the corrupt model (resample ablation), the complete one the
clean model.

A node circuit is therefore a set of edge masks (every edge out of an ablated node at
1); a neuron circuit also multiplies each source's ``patch - current`` by its ablated
dimensions (``src_dims`` of :meth:`PatchableModel.patch`).

Circuits of size ``n`` hold the ``n`` nodes (neurons) of largest score (``abs(score)``
with ``absolute=True``), ties broken by graph order (the embedding first, then by block
its heads and MLP; by dimension within a node), so every size is exact. MIB keeps the
top ``n`` by ``torch.argsort``, whose order among ties is unspecified. MIB's pruning step
after a node/neuron top-n removes nothing: every kept node's row of edges also covers
its own inputs, so it always counts as connected (see :func:`mib_weighted_edge_count`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from edgewise.checks import require_int
from edgewise.data import (
    PromptDataLoader,
    check_batches_for_model,
    loader_batches,
    refuse_padded_means,
    require_full_prompts,
)
from edgewise.data.checks import scoring_entry
from edgewise.evaluation.circuits import circuits_outputs
from edgewise.patching.model import PatchableModel
from edgewise.runtime.ablation import batch_ablation, src_ablations
from edgewise.types import AblationType, CircuitOutputs, NodeLevel, NodeScores

NodeCircuit = dict[str, torch.Tensor]
"""Source module name -> kept (bool) ``[n]`` (node level) or ``[n, d_model]`` (neuron
level), shaped like the :data:`~edgewise.types.NodeScores` it was chosen from."""


def node_score_level(model: PatchableModel, scores: NodeScores) -> NodeLevel:
    """``"node"`` or ``"neuron"``, from the shapes of ``scores``; raise a ``ValueError``
    naming the module for a missing entry, a wrong shape or NaN."""
    d = int(model.cfg.d_model)
    levels = set()
    for mod in model.graph.src_modules:
        n = mod.n_heads or 1
        if mod.module_name not in scores:
            raise ValueError(f"node scores have no entry for source module {mod.module_name}")
        s = scores[mod.module_name]
        if not isinstance(s, torch.Tensor):
            raise TypeError(
                f"node scores[{mod.module_name!r}] must be a tensor, got {type(s).__name__}"
            )
        if tuple(s.shape) == (n,):
            levels.add("node")
        elif tuple(s.shape) == (n, d):
            levels.add("neuron")
        else:
            raise ValueError(f"node scores[{mod.module_name!r}] has shape {tuple(s.shape)}; expected [{n}] "
                             f"(node level) or [{n}, {d}] (neuron level): scores of another model?")  # fmt: skip
        if bool(torch.isnan(s).any()):
            raise ValueError(f"node scores[{mod.module_name!r}] hold NaN, which cannot be ranked: "
                             "fix the model or inputs that made it and score again")  # fmt: skip
    if len(levels) != 1:
        raise ValueError("node scores mix node-level [n] and neuron-level [n, d_model] tensors")
    return levels.pop()  # type: ignore[return-value]


def n_scored_units(model: PatchableModel, level: NodeLevel) -> int:
    """How many units a circuit chooses from: sources, or sources times ``d_model``."""
    return len(model.srcs) * (int(model.cfg.d_model) if level == "neuron" else 1)


def node_circuit_sizes(
    model: PatchableModel, level: NodeLevel, sizes: Sequence[int | float]
) -> list[int]:
    """Sizes as unit counts, sorted and distinct: an int is a count, a float a fraction
    of all units (MIB: ``int(fraction * n_units)``)."""
    if isinstance(sizes, int | float):
        raise TypeError(f"sizes must be a list of circuit sizes, got {sizes!r}; write [{sizes!r}]")
    total = n_scored_units(model, level)
    out = set()
    for s in sizes:
        if isinstance(s, float):
            if not 0.0 <= s <= 1.0:
                raise ValueError(f"fractional circuit size {s} must be within [0, 1]")
            out.add(int(s * total))
        else:
            n = require_int(s, "circuit size", 0)
            if n > total:
                raise ValueError(
                    f"circuit size {n} is more than the {total} {level}s of this model"
                )
            out.add(n)
    return sorted(out)


def node_circuit(
    model: PatchableModel, scores: NodeScores, size: int, absolute: bool = True
) -> NodeCircuit:
    """The ``size`` nodes (neurons) of largest score (``abs(score)`` with ``absolute``),
    ties in graph order: ``{source module: bool [n] | [n, d_model]}``."""
    level = node_score_level(model, scores)
    size = require_int(size, "size", 0)
    total = n_scored_units(model, level)
    if size > total:
        raise ValueError(f"size {size} is more than the {total} {level}s of this model")
    mods = model.graph.src_modules
    flat = torch.cat(
        [scores[m.module_name].detach().flatten().to("cpu", torch.float64) for m in mods]
    )
    key = flat.abs() if absolute else flat
    order = torch.sort(key, descending=True, stable=True).indices
    kept = torch.zeros(flat.numel(), dtype=torch.bool)
    kept[order[:size]] = True
    out: NodeCircuit = {}
    i = 0
    for m in mods:
        n = scores[m.module_name].numel()
        out[m.module_name] = kept[i : i + n].view(scores[m.module_name].shape).to(model.device)
        i += n
    return out


def node_circuit_patch(
    model: PatchableModel, circuit: NodeCircuit
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """The masks and ``src_dims`` that ablate everything outside ``circuit`` (clean
    prompts in, see :meth:`PatchableModel.patch`): masks ``{dest module: mask_shape}``
    with 1 on every edge out of a source with an ablated unit; ``src_dims``
    ``[n_srcs, d_model]`` (1: the dimension is ablated) for a neuron circuit that keeps
    part of some node, else None."""
    d = int(model.cfg.d_model)
    parts = []
    for m in model.graph.src_modules:
        kept = circuit[m.module_name].to(model.device, torch.bool)
        parts.append(kept[:, None].expand(-1, d) if kept.dim() == 1 else kept)
    ablated = ~torch.cat(parts)  # [n_srcs, d_model]
    node_out = ablated.any(-1)  # [n_srcs]: some output dimension of the node is replaced
    masks = {
        name: node_out[mod.src_lo : mod.src_hi].float().expand(mod.mask_shape).clone()
        for name, mod in model.dest_modules.items()
    }
    partial = bool((ablated.any(-1) & ~ablated.all(-1)).any())
    return masks, (ablated.float() if partial else None)


def mib_weighted_edge_count(model: PatchableModel, circuit: NodeCircuit) -> float:
    """The circuit's edge count as MIB reports it (EAP-IG ``Graph.weighted_edge_count``
    after a node/neuron top-n): every kept node times every input of a kept node (three
    per head: Q, K, V) plus the logits, each weighted by the node's fraction of kept
    neurons. Like MIB it counts pairs that no edge joins (a later node into an earlier
    one's input), as MIB's edge matrix after a node top-n holds them."""
    weight = 0.0
    inputs = 1  # the logits
    for m in model.graph.src_modules:
        kept = circuit[m.module_name].to(torch.float64)
        frac = kept.mean(-1) if kept.dim() == 2 else kept  # [n]
        weight += float(frac.sum())
        alive = int((frac > 0).sum())
        inputs += 3 * alive if m.kind == "attn" else alive if m.kind == "mlp" else 0
    return weight * inputs


@scoring_entry
def run_node_circuits(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    sizes: Sequence[int | float],
    scores: NodeScores,
    ablation_type: AblationType = AblationType.RESAMPLE,
    absolute: bool = True,
    circuits_per_pass: int | None = None,
    progress: bool = True,
) -> CircuitOutputs:
    """The model's output (at ``model.out_slice``; for a right-padded batch, at each
    prompt's own last token) on every batch's clean prompts with
    only the node (or neuron) circuit of each size intact: :func:`run_circuits` for node
    and neuron circuits.

    Args:
        model: the patchable model.
        dataloader: clean / corrupt prompt pairs.
        sizes: circuit sizes, counts of nodes (neurons) or fractions of them (floats).
        scores: node or neuron scores (:data:`~edgewise.types.NodeScores`); the level is
            read from their shapes.
        ablation_type: what ablated units carry (resample: the corrupt prompt's outputs).
        absolute: rank by ``abs(score)`` (True) or by the signed score.
        circuits_per_pass: circuits stacked in one forward pass (default 1 on a CPU, up
            to 16 elsewhere); the outputs are the same.
        progress: show a progress bar.

    Returns:
        circuit size (units) -> batch key -> output ``[batch, (seq,) vocab]``.
    """
    ablation_type = AblationType(ablation_type)
    level = node_score_level(model, scores)
    require_full_prompts(dataloader, model, ablation_type)
    batches = loader_batches(dataloader, "run_node_circuits")
    check_batches_for_model(model, batches, "run_node_circuits", right_padded=True)
    refuse_padded_means(batches, ablation_type, "run_node_circuits")
    counts = node_circuit_sizes(model, level, sizes)
    if circuits_per_pass is not None:
        circuits_per_pass = require_int(circuits_per_pass, "circuits_per_pass", 1)
    per_pass = circuits_per_pass or (1 if model.device.type == "cpu" else min(len(counts), 16))
    patches = [node_circuit_patch(model, node_circuit(model, scores, n, absolute)) for n in counts]
    mean = (
        src_ablations(model, dataloader, ablation_type) if ablation_type.mean_over_dataset else None
    )
    outputs: CircuitOutputs = {n: {} for n in counts}
    bar = tqdm(total=len(counts) * len(batches), desc=f"{level} circuits", disable=not progress)
    with torch.inference_mode():
        for batch in batches:
            patch = (
                mean if mean is not None else batch_ablation(model, batch, ablation_type, "corrupt")
            )
            toks = batch.clean
            for i in range(0, len(counts), per_pass):
                chunk = patches[i : i + per_pass]
                c = len(chunk)
                if c == 1:
                    masks, dims = chunk[0]
                else:
                    masks = {n: torch.stack([m[n] for m, _ in chunk]) for n in chunk[0][0]}
                    dims = None
                    if any(dm is not None for _, dm in chunk):
                        full = [dm if dm is not None else _node_dims(model) for _, dm in chunk]
                        dims = torch.stack(full)
                outs = circuits_outputs(model, toks, batch.lengths, masks, patch, c, src_dims=dims)
                for n, out in zip(counts[i : i + c], outs):
                    outputs[n][batch.key] = out.clone()
                bar.update(c)
    bar.close()
    return outputs


def _node_dims(model: PatchableModel) -> torch.Tensor:
    """``src_dims`` ``[n_srcs, d_model]`` of a circuit of whole nodes (all 1: every
    dimension of a source patched wherever its edges are), to stack with neuron ones."""
    return torch.ones(len(model.srcs), int(model.cfg.d_model), device=model.device)
