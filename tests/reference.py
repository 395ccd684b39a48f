"""An independent edge patcher for tests: plain forward hooks and a Python loop over
edges, no einsum and no custom autograd. It computes, for every destination hook,

    input_d + sum over edges (s, d) of mask[edge] * (patch_s - current_s)

one edge at a time, so PatchableModel's vectorised patching and hand-written gradients
can be checked against it."""

from __future__ import annotations

import torch

from edgewise.patching import PatchableModel
from edgewise.prune_algos.loss import answer_loss, check_loss_functions, grad_values
from edgewise.runtime.ablation import batch_src_ablations
from edgewise.types import AblationType


def reference_patched_logits(
    pm: PatchableModel,
    tokens: torch.Tensor,
    masks: dict[str, torch.Tensor],
    patch_src_outs: torch.Tensor,
) -> torch.Tensor:
    current: dict[int, torch.Tensor] = {}
    by_module: dict[str, list] = {}
    for e in pm.edges:
        by_module.setdefault(e.dest.module_name, []).append(e)
    handles = []

    def src_hook(src):
        def hook(_m, _i, out):
            if src.head_idx is not None:
                out = head_outputs(pm, src.block, out)[:, :, src.head_idx]
            current[src.src_idx] = out

        return hook

    def dest_hook(name):
        def hook(_m, _i, x):
            add = torch.zeros_like(x)
            for e in by_module[name]:
                m = masks[name][e.patch_idx]
                if not m.requires_grad and float(m) == 0.0:
                    continue
                cur = current[e.src.src_idx]
                contribution = m.to(x.dtype) * (patch_src_outs[e.src.src_idx].expand_as(cur) - cur)
                if e.seq_idx is not None:
                    keep = torch.zeros(cur.shape[1], 1, dtype=x.dtype)
                    keep[e.seq_idx] = 1.0
                    contribution = contribution * keep
                if e.dest.head_idx is None:
                    add = add + contribution
                else:
                    onehot = torch.zeros(x.shape[2], 1, dtype=x.dtype)
                    onehot[e.dest.head_idx] = 1.0
                    add = add + contribution.unsqueeze(2) * onehot
            return x + add

        return hook

    hd = pm.adapter
    # TransformerLens' own per-head hooks (hook_result, hook_q_input, ...), not the ones
    # PatchableModel patches at (hook_z, attn.hook_q, ...)
    with hd.flags(**pm.graph_flags):
        try:
            for s in pm.srcs:
                handles.append(hd.hook_point(s.module_name).register_forward_hook(src_hook(s)))
            for name in pm.dest_modules:
                handles.append(hd.hook_point(name).register_forward_hook(dest_hook(name)))
            return pm.wrapped_model(tokens)
        finally:
            for h in handles:
                h.remove()


def head_outputs(pm: PatchableModel, block: int, result: torch.Tensor) -> torch.Tensor:
    """What each head of ``block`` adds to the residual stream, from ``hook_result``
    ``[batch, seq, heads, d_model]``. With a norm of the summed heads (Gemma 2's
    ``ln1_post``, an RMSNorm: a per-position scale times a weight, so linear for a fixed
    input) each head adds its part of ``ln1_post(sum)``, the model's own module applied
    to the sum, divided out dimension by dimension (the bias shared equally)."""
    blk = pm.wrapped_model.blocks[block]
    ln = getattr(blk, "ln1_post", None)
    if ln is None or isinstance(getattr(ln, "original_component", ln), torch.nn.Identity):
        return result
    b_o = getattr(blk.attn, "b_O", None)
    if isinstance(b_o, torch.Tensor):
        result = result + b_o / result.shape[2]
    total = result.sum(2)
    return result * (ln(total) / total).unsqueeze(2)


def reference_eap_scores(
    model: PatchableModel,
    dataloader,
    grad_function: str = "logit",
    answer_function: str = "avg_diff",
    ablation_type: AblationType = AblationType.RESAMPLE,
    clean_corrupt: str | None = "corrupt",
    fixed: torch.Tensor | None = None,
    edges=None,
) -> dict[str, torch.Tensor]:
    """Edge attribution patching with plain hooks and one edge at a time: keep each
    source's output and the gradient at each destination's input (TransformerLens' own
    per-head hooks, its own backward), then score every edge by a dot product. ``fixed``
    ``[n_srcs, 1, 1, d_model]``: the patch of every batch (e.g. optimal ablation values).
    Only ``edges`` (default: all) are scored; the others stay 0."""
    check_loss_functions(grad_function, answer_function)
    ablation_type = AblationType(ablation_type)
    if ablation_type.mean_over_dataset:
        clean_corrupt = None
    if fixed is None:
        patches = batch_src_ablations(model, dataloader, ablation_type, clean_corrupt)
    else:
        patches = {batch.key: fixed for batch in dataloader}
    scores = {n: torch.zeros(m.mask_shape, dtype=model.score_dtype, device=model.device)
              for n, m in model.dest_modules.items()}
    for batch in dataloader:
        logits, acts = capture_sources_and_dests(model, batch.clean)
        loss = answer_loss(grad_values(logits, grad_function), batch, answer_function)
        dest_names = list(model.dest_modules)
        grads = dict(zip(dest_names, torch.autograd.grad(loss, [acts[n] for n in dest_names])))
        patch = patches[batch.key]
        for edge in model.edges if edges is None else edges:
            src, dest = edge.src, edge.dest
            clean_out = acts[src.module_name]
            if src.head_idx is not None:
                clean_out = head_outputs(model, src.block, clean_out.detach())[:, :, src.head_idx]
            diff = patch[src.src_idx].expand_as(clean_out) - clean_out.detach()
            grad = grads[dest.module_name]
            if dest.head_idx is not None:
                grad = grad[:, :, dest.head_idx]
            if edge.seq_idx is not None:
                grad, diff = grad[:, edge.seq_idx], diff[:, edge.seq_idx]
            scores[dest.module_name][edge.patch_idx] += (grad.double() * diff.double()).sum()
    return scores


def capture_sources_and_dests(model: PatchableModel, tokens: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Logits at ``model.out_slice`` and every source output and destination input."""
    acts: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name: str):
        # A hook's output may alias the residual stream (TransformerBridge's hook_mlp_in
        # feeds ln2 the very tensor the skip connection adds), so give the destination
        # its own copy and differentiate with respect to that.
        # With frozen weights the first destinations' inputs need no gradient; a leaf that
        # does lets the gradient be taken there (nothing upstream of it needs one).
        def hook(_m, _i, out: torch.Tensor) -> torch.Tensor:
            acts[name] = out.clone() if out.requires_grad else out.detach().clone().requires_grad_()
            return acts[name]

        return hook

    names = {s.module_name for s in model.srcs} | set(model.dest_modules)
    # TransformerLens' own per-head hooks (hook_result, hook_q_input, ...), independent of
    # the hooks PatchableModel patches at
    with model.adapter.flags(**model.graph_flags):
        try:
            for name in sorted(names):
                handles.append(model.adapter.hook_point(name).register_forward_hook(keep(name)))
            logits = model(tokens)[model.out_slice]
        finally:
            for h in handles:
                h.remove()
    return logits, acts
