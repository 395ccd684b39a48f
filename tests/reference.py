"""An independent edge patcher for tests: plain forward hooks and a Python loop over
edges, no einsum and no custom autograd. It computes, for every destination hook,

    input_d + sum over edges (s, d) of mask[edge] * (patch_s - current_s)

one edge at a time, so PatchableModel's vectorised patching and hand-written gradients
can be checked against it."""

from __future__ import annotations

import torch

from edgewise.patching import PatchableModel


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
            current[src.src_idx] = out if src.head_idx is None else out[:, :, src.head_idx]

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
