"""Where edges are read and patched: head outputs from hook_z and Q/K/V patched after the
projection give exactly what TransformerLens' own per-head hooks give (use_attn_result,
use_split_qkv_input), values and mask gradients, and a model where they would not falls
back to those hooks with a warning."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgewise.patching.sites as hook_points
import edgewise.patching.wrap as patching
from edgewise import patchable_model
from edgewise.models import random_bridge, random_model

from reference import reference_patched_logits
from util import hooked_only

VOCAB = 20
NORMS = ["LN", "LNPre", "RMS", "RMSPre", None]


def _tokens(gen, batch=3, seq=5):
    return torch.randint(3, VOCAB, (batch, seq), generator=gen)


def _model(norm="LN", n_kv=None, parallel=False, dtype=torch.float64, seed=0):
    return random_model(
        n_layers=2, n_heads=4, d_head=2, d_vocab=VOCAB, n_kv_heads=n_kv, normalization_type=norm,
        parallel_attn_mlp=parallel, positional_embedding_type="rotary" if n_kv else "standard",
        dtype=dtype, seed=seed,
    )


@hooked_only("HookedTransformer's hook points and cfg flags; bridges: "
             "test_bridges_read_heads_from_hook_z_and_patch_qkv_after_the_projection")
def test_hooked_transformer_uses_fast_hooks_and_no_per_head_flags():
    model = _model()
    pm = patchable_model(model)
    assert all(h.point.endswith("attn.hook_z") for h in pm.src_hooks if h.module.n_heads)
    qkv = [h for h in pm.dest_hooks if h.module.n_heads]
    assert qkv and all(h.projected and h.point.split(".")[-1] in ("hook_q", "hook_k", "hook_v")
                       for h in qkv)
    assert not model.cfg.use_split_qkv_input and not model.cfg.use_attn_result
    assert model.cfg.use_hook_mlp_in
    # the reference hooks are still there for independent checks
    assert pm.graph_flags == {"use_split_qkv_input": True, "use_hook_mlp_in": True,
                              "use_attn_result": True}


def _bridge(arch, seed=0):
    return random_bridge(arch, n_layers=2, n_heads=4, d_head=4, d_vocab=VOCAB, dtype=torch.float64,
                         n_kv_heads=2 if arch != "gpt2" else None, seed=seed)  # fmt: skip


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_bridges_read_heads_from_hook_z_and_patch_qkv_after_the_projection(arch):
    """GPT-2 (LayerNorm), Llama and Qwen 2 (RMSNorm, 2 key/value heads of 4) bridges:
    head outputs from hook_z, Q/K/V patched at the projections' outputs (K/V per key/value
    head), with TransformerLens' per-head flags off."""
    model = _bridge(arch)
    pm = patchable_model(model)
    assert all(h.point.endswith("attn.hook_z") for h in pm.src_hooks if h.module.n_heads)
    qkv = [h for h in pm.dest_hooks if h.module.n_heads]
    assert qkv and all(h.projected and h.flat and h.point.split(".")[-1] in ("hook_q", "hook_k", "hook_v")
                       for h in qkv)  # fmt: skip
    assert {h.module.n_heads for h in qkv if h.qkv in "kv"} == {4 if arch == "gpt2" else 2}
    assert not model.cfg.use_split_qkv_input and not model.cfg.use_attn_result


@pytest.mark.parametrize(("arch", "use_seq", "copies", "value", "seed"), [
    ("gpt2", False, 2, 0.0, 0), ("gpt2", True, 1, 0.3, 1), ("llama", False, 1, 0.0, 2),
    ("llama", True, 2, 0.3, 3), ("qwen2", False, 2, 0.0, 4), ("qwen2", True, 1, 0.0, 5),
])  # fmt: skip
def test_bridge_projected_patching_matches_the_reference_values_and_gradients(arch, use_seq, copies,
                                                                              value, seed):  # fmt: skip
    """On bridges, at mask 0 (edge attribution patching: the hand-written gradient through
    ln1) and at a fractional mask (autograd through the patched per-head inputs): logits
    and mask gradients equal those through TransformerLens' own per-head hooks (the
    reference patcher), in float64 (logits to 1e-12)."""
    pm = patchable_model(_bridge(arch, seed % 3), seq_len=5 if use_seq else None)
    assert any(h.projected for h in pm.dest_hooks)
    gen = torch.Generator().manual_seed(seed)
    clean, corrupt = _tokens(gen), _tokens(gen)
    patch = pm.src_outs(corrupt)
    w = torch.randn(VOCAB, generator=gen, dtype=torch.float64)
    stacked = {n: torch.full((copies, *m.mask_shape), value, dtype=torch.float64,
                             requires_grad=True) for n, m in pm.dest_modules.items()}  # fmt: skip
    out = pm.run_patched(clean.repeat(copies, 1), stacked, patch)
    (out * w).sum().backward()
    masks = {n: torch.full(m.mask_shape, value, dtype=torch.float64, requires_grad=True)
             for n, m in pm.dest_modules.items()}  # fmt: skip
    want_out = reference_patched_logits(pm, clean, masks, patch)
    (want_out * w).sum().backward()
    torch.testing.assert_close(out.detach(), want_out.detach().repeat(copies, 1, 1), atol=1e-12, rtol=0)
    # Llama's and Qwen 2's Hugging Face RMSNorm normalises in float32 even in a float64
    # model, so the gradient through it (autograd's or the hand-written one) is exact to
    # float32 only (sums over d_model and tokens: 1e-5 of the largest gradient); GPT-2's
    # LayerNorm runs in float64
    tol = 1e-12 if arch == "gpt2" else 1e-5
    for n in masks:
        scale = 1.0 + float(masks[n].grad.abs().max())
        for i in range(copies):
            torch.testing.assert_close(stacked[n].grad[i], masks[n].grad, atol=tol * scale, rtol=0)


def _patched_run_and_embeddings(pm, clean, masks, patch, param_grads):
    """Logits of ``clean`` patched with ``masks`` and ``patch`` (``param_grads`` as
    :meth:`PatchableModel.patch` takes it), and the embeddings that run computed (every
    block's input depends on them): the upstream activation whose gradient the
    mask-only backward must leave unchanged. They are made a leaf that requires a
    gradient: with ``param_grads=False`` no parameter does, so nothing upstream of the
    first patched activation would be in the autograd graph."""
    seen: list[torch.Tensor] = []

    def leaf(_m, _i, out):
        seen.append(out.detach().requires_grad_(True))
        return seen[-1]

    embed = pm.adapter.hook_point("hook_embed")
    handle = embed.register_forward_hook(leaf)
    try:
        with pm.patch(masks, patch, param_grads=param_grads):
            out = pm(clean)
    finally:
        handle.remove()
    assert len(seen) == 1
    return out, seen[0]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_bridge_mask_only_backward_gives_the_same_gradients(arch):
    """``param_grads=False`` on a bridge: the masks and every upstream activation (here
    the embeddings, which reach every block) get the gradients of the model's own
    backward (float64; float32 through Llama's RMSNorm)."""
    pm = patchable_model(_bridge(arch, 1))
    gen = torch.Generator().manual_seed(4)
    clean, corrupt = _tokens(gen), _tokens(gen)
    patch = pm.src_outs(corrupt)
    w = torch.randn(VOCAB, generator=gen, dtype=torch.float64)
    grads = {}
    for param_grads in (True, False):
        masks = pm.new_masks(0.0, requires_grad=True, dtype=torch.float64)
        out, embedded = _patched_run_and_embeddings(pm, clean, masks, patch, param_grads)
        grads[param_grads] = torch.autograd.grad((out * w).sum(), [*masks.values(), embedded])
    tol = 1e-12 if arch == "gpt2" else 1e-5  # Llama's RMSNorm runs in float32
    for got, want in zip(grads[False], grads[True]):
        torch.testing.assert_close(got, want, atol=tol * (1.0 + float(want.abs().max())), rtol=0)


@hooked_only("HookedTransformerConfig's norm types (LNPre, RMSPre, none) and parallel blocks "
             "with grouped-query attention; bridges (GPT-2, Llama, Qwen 2): "
             "test_bridge_projected_patching_matches_the_reference_values_and_gradients")
@settings(max_examples=16, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    norm=st.sampled_from(NORMS),
    gqa=st.booleans(),
    parallel=st.booleans(),
    use_seq=st.booleans(),
    copies=st.sampled_from([1, 2]),
    value=st.sampled_from([0.0, 0.3]),
    seed=st.integers(0, 2**16),
)
def test_mask_gradients_match_autograd_of_reference(norm, gqa, parallel, use_seq, copies, value,
                                                    seed):
    """At mask 0 (edge attribution patching: the hand-written gradient through ln1) and at
    a fractional mask (autograd through the patched per-head inputs), for every norm type,
    grouped-query attention, token positions and stacked circuits."""
    pm = patchable_model(_model(norm, n_kv=2 if gqa else None, parallel=parallel, seed=seed),
                         seq_len=5 if use_seq else None)
    gen = torch.Generator().manual_seed(seed)
    clean, corrupt = _tokens(gen), _tokens(gen)
    patch = pm.src_outs(corrupt)
    w = torch.randn(VOCAB, generator=gen, dtype=torch.float64)
    stacked = {n: torch.full((copies, *m.mask_shape), value, dtype=torch.float64,
                             requires_grad=True) for n, m in pm.dest_modules.items()}
    out = pm.run_patched(clean.repeat(copies, 1), stacked, patch)
    (out * w).sum().backward()
    masks = {n: torch.full(m.mask_shape, value, dtype=torch.float64, requires_grad=True)
             for n, m in pm.dest_modules.items()}
    want_out = reference_patched_logits(pm, clean, masks, patch)
    (want_out * w).sum().backward()
    torch.testing.assert_close(out.detach(), want_out.detach().repeat(copies, 1, 1),
                               atol=1e-8, rtol=0)
    for n in masks:
        for i in range(copies):
            torch.testing.assert_close(stacked[n].grad[i], masks[n].grad, atol=1e-7, rtol=1e-6)


@hooked_only("HookedTransformerConfig's norm types (LNPre, RMSPre, none) and parallel blocks "
             "with grouped-query attention; bridges: test_bridge_mask_only_backward_gives_the_same_gradients")
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(norm=st.sampled_from(NORMS), gqa=st.booleans(), parallel=st.booleans(),
       seed=st.integers(0, 2**16))
def test_mask_only_backward_gives_the_same_gradients(norm, gqa, parallel, seed):
    """``param_grads=False`` replaces the model's backward through ln1 and the Q/K/V
    projection by the sum of the mask-gradient rows: the masks and every upstream
    activation (here the embeddings, which reach every block) get the same gradients as
    through the model's own backward, which still gives the weights theirs by default."""
    pm = patchable_model(_model(norm, n_kv=2 if gqa else None, parallel=parallel, seed=seed))
    gen = torch.Generator().manual_seed(seed)
    clean, corrupt = _tokens(gen), _tokens(gen)
    patch = pm.src_outs(corrupt)
    w = torch.randn(VOCAB, generator=gen, dtype=torch.float64)
    grads = {}
    for param_grads in (True, False):
        pm.wrapped_model.zero_grad(set_to_none=True)
        masks = pm.new_masks(0.0, requires_grad=True, dtype=torch.float64)
        out, embedded = _patched_run_and_embeddings(pm, clean, masks, patch, param_grads)
        inputs = [*masks.values(), embedded]
        grads[param_grads] = torch.autograd.grad((out * w).sum(), inputs, retain_graph=True)
        if param_grads:
            (out * w).sum().backward()
            assert pm.wrapped_model.blocks[0].attn.W_Q.grad is not None
    for got, want in zip(grads[False], grads[True]):
        scale = 1.0 + float(want.abs().max())
        torch.testing.assert_close(got, want, atol=1e-10 * scale, rtol=0)


@pytest.mark.parametrize("norm", NORMS)
def test_bfloat16_projected_patching_tracks_float64(norm):
    """Half-precision models normalise in float32 like TransformerLens; patched logits
    stay within bfloat16 resolution of the same model in float64."""
    m64 = _model(norm, seed=3)
    m16 = _model(norm, seed=3, dtype=torch.bfloat16)
    m16.load_state_dict(m64.state_dict())  # the same weights, rounded to bfloat16
    pm64, pm16 = patchable_model(m64), patchable_model(m16)
    gen = torch.Generator().manual_seed(3)
    clean, corrupt = _tokens(gen), _tokens(gen)
    masks = {n: (torch.rand(m.mask_shape, generator=gen) < 0.5).float()
             for n, m in pm64.dest_modules.items()}
    want = pm64.run_patched(clean, masks, pm64.src_outs(corrupt))
    got = pm16.run_patched(clean, masks, pm16.src_outs(corrupt)).double()
    scale = float(want.abs().max())
    assert (got - want).abs().max() <= 0.05 * scale


def _assert_matches_reference(pm, seed):
    gen = torch.Generator().manual_seed(seed)
    clean, corrupt = _tokens(gen), _tokens(gen)
    patch = pm.src_outs(corrupt)
    masks = {n: (torch.rand(m.mask_shape, generator=gen) < 0.5).double()
             for n, m in pm.dest_modules.items()}
    torch.testing.assert_close(pm.run_patched(clean, masks, patch),
                               reference_patched_logits(pm, clean, masks, patch),
                               atol=1e-8, rtol=0)


def test_without_fast_hooks_tl_per_head_hooks_give_the_same(monkeypatch):
    monkeypatch.setattr(patching, "z_hooks_available", lambda *a: False)
    monkeypatch.setattr(patching, "projected_dests_available", lambda *a: False)
    model = _model("RMS", n_kv=2)
    pm = patchable_model(model, seq_len=5)
    assert model.cfg.use_split_qkv_input and model.cfg.use_attn_result
    assert all(h.point.endswith("hook_result") for h in pm.src_hooks if h.module.n_heads)
    _assert_matches_reference(pm, seed=5)


def test_fast_hooks_that_disagree_with_tl_fall_back_with_a_warning(monkeypatch):
    wrong = hook_points._heads_from_z

    def doubled(attn, n_heads):
        f = wrong(attn, n_heads)
        return lambda z, into=None: 2 * f(z) if into is None else f(z, into).mul_(2)

    monkeypatch.setattr(hook_points, "_heads_from_z", doubled)
    model = _model()
    with pytest.warns(UserWarning, match="does not reproduce"):
        pm = patchable_model(model)
    assert all(h.point.endswith("hook_result") for h in pm.src_hooks if h.module.n_heads)
    assert not any(h.projected for h in pm.dest_hooks)
    _assert_matches_reference(pm, seed=6)
