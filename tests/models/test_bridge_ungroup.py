"""Grouped-query attention ungrouped on TransformerBridges (TransformerLens 3.9 and 4.x), as
MIB loads its models: every query head its own K and V input. Checked on tiny random
Llama 3, Qwen 2.5 and Gemma 2 bridges against the independent per-edge patcher, against
the grouped model (an edge into one query head's K/V reaches that head exactly as the
same edge into its whole group does, and no other head), against EAP's closed form, and,
where TransformerLens has it, against TransformerLens' own ungrouped HookedTransformer."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgewise import edge_attribution_patching_prune_scores, patchable_model
from edgewise.io.files import load_mib_json, mib_edge_name, save_mib_json
from edgewise.mib.submission import mib_graph_names
from edgewise.models import random_bridge, random_hooked_transformer
from edgewise.models import ungroup as ungroup_module
from edgewise.models.ungroup import RepeatedKVLinear, bridge_kv_ungrouped, set_bridge_ungrouped_kv

from reference import reference_eap_scores, reference_patched_logits
from util import VOCAB, random_loader, requires_hooked

GQA = ("llama", "qwen2", "gemma2")
SHAPE = dict(n_layers=2, n_heads=4, d_head=4, d_vocab=VOCAB, n_kv_heads=2, dtype=torch.float64)
GROUPS = 2  # query heads per key/value head
# Hugging Face's Gemma2RMSNorm normalises in float32 even for float64 weights
ATOL = {"llama": 1e-10, "qwen2": 1e-10, "gemma2": 1e-6}


def bridge(arch: str, seed: int = 0):
    return random_bridge(arch, seed=seed, **SHAPE)


def prompts(seed: int, batch: int = 3, seq: int = 7):
    """Clean and corrupt prompts longer than Gemma 2's window of 4."""
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randint(3, VOCAB, (batch, seq), generator=gen),
        torch.randint(3, VOCAB, (batch, seq), generator=gen),
        gen,
    )


@cache
def pair(arch: str):
    """Patchable models of the same random weights: ungrouped and grouped."""
    return patchable_model(bridge(arch), ungroup_kv=True), patchable_model(bridge(arch), ungroup_kv=False)


def z_of(pm, block: int, tokens, masks, patch) -> torch.Tensor:
    """Every head's attention output ``z`` ``[batch, seq, heads, d_head]`` in ``block``
    in the patched pass."""
    seen = []
    point = pm.adapter.hook_point(f"blocks.{block}.attn.hook_z")
    handle = point.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    try:
        pm.run_patched(tokens, masks, patch)
    finally:
        handle.remove()
    (z,) = seen
    return z.reshape(*z.shape[:2], SHAPE["n_heads"], -1)


# ------------------------------------------------------------------ the ungrouped model
@pytest.mark.parametrize("arch", GQA)
def test_ungrouping_changes_neither_the_outputs_nor_the_weights(arch):
    model = bridge(arch)
    tokens = prompts(0)[0]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        want = model(tokens)  # grouped
    pm = patchable_model(model, ungroup_kv=True)
    assert bridge_kv_ungrouped(model) and model.cfg.ungroup_grouped_query_attention
    attn = model.blocks[1].attn
    assert isinstance(attn.k.original_component, RepeatedKVLinear)
    assert attn.original_component.num_key_value_groups == 1
    # one key/value input per query head; W_K read per query head, kv head h // 2
    assert pm.dest_modules["blocks.1.hook_k_input"].mask_shape == (4, 1 + 4 + 1)
    w = attn.k.original_component._parameters["weight"]  # [2 * 4, 16], grouped
    for h in range(4):
        torch.testing.assert_close(attn.W_K[h], w[(h // GROUPS) * 4 : (h // GROUPS + 1) * 4].T, atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(pm(tokens), want, atol=ATOL[arch], rtol=0)
    after = model.state_dict()
    assert list(after) == list(state)  # same names, same tensors: nothing copied or renamed
    assert all(torch.equal(after[k], v) for k, v in state.items())
    # idempotent, and undone by ungroup_kv=False
    set_bridge_ungrouped_kv(model, True)
    assert isinstance(attn.k.original_component, RepeatedKVLinear)
    assert attn.W_K.shape == (4, 16, 4)
    grouped = patchable_model(model, ungroup_kv=False)
    assert not bridge_kv_ungrouped(model) and not model.cfg.ungroup_grouped_query_attention
    assert type(attn.k.original_component) is torch.nn.Linear
    assert attn.original_component.num_key_value_groups == GROUPS
    assert grouped.dest_modules["blocks.1.hook_k_input"].mask_shape == (2, 6)
    with torch.no_grad():
        torch.testing.assert_close(grouped(tokens), want, atol=ATOL[arch], rtol=0)


@pytest.mark.parametrize("arch", GQA)
def test_ungrouped_bridge_patching_matches_reference(arch):
    pm = pair(arch)[0]
    clean, corrupt, gen = prompts(2)
    patch = pm.src_outs(corrupt).clone()
    masks = {n: torch.rand(m.mask_shape, generator=gen, dtype=torch.float64)
             for n, m in pm.dest_modules.items()}  # fmt: skip
    got = pm.run_patched(clean, masks, patch)
    want = reference_patched_logits(pm, clean, masks, patch)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    assert (got - pm(clean)).abs().max() > 1e-3
    # every edge patched is the corrupt run; none is the clean run
    one, zero = pm.new_masks(1.0, dtype=torch.float64), pm.new_masks(0.0, dtype=torch.float64)
    torch.testing.assert_close(pm.run_patched(clean, one, patch), pm(corrupt), atol=ATOL[arch], rtol=0)
    torch.testing.assert_close(pm.run_patched(clean, zero, patch), pm(clean), atol=ATOL[arch], rtol=0)


def test_ungrouped_bridge_with_one_input_per_head_matches_reference():
    """``separate_qkv=False``: one ``hook_attn_in`` input per query head, read by its Q and
    by its own K and V (the whole group's K/V input is refused while grouped)."""
    pm = patchable_model(bridge("qwen2"), ungroup_kv=True, separate_qkv=False)
    assert pm.dest_modules["blocks.1.hook_attn_in"].mask_shape == (4, 6)
    clean, corrupt, gen = prompts(5)
    patch = pm.src_outs(corrupt).clone()
    masks = {n: torch.rand(m.mask_shape, generator=gen, dtype=torch.float64)
             for n, m in pm.dest_modules.items()}  # fmt: skip
    got = pm.run_patched(clean, masks, patch)
    torch.testing.assert_close(got, reference_patched_logits(pm, clean, masks, patch), atol=1e-10, rtol=0)
    assert (got - pm(clean)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="use separate_qkv=True"):
        patchable_model(bridge("qwen2"), ungroup_kv=False, separate_qkv=False)


@cache
def corrupt_patches(arch: str):
    """The clean prompts, both models' corrupt source outputs, and the ungrouped model's
    unpatched ``z`` per block."""
    ungrouped, grouped = pair(arch)
    clean, corrupt, _ = prompts(4)
    patch_u, patch_g = ungrouped.src_outs(corrupt).clone(), grouped.src_outs(corrupt).clone()
    zeros = ungrouped.new_masks(0.0, dtype=torch.float64)
    return clean, patch_u, patch_g, [z_of(ungrouped, b, clean, zeros, patch_u) for b in range(2)]


@settings(max_examples=10)
@given(
    arch=st.sampled_from(GQA),
    qkv=st.sampled_from("kv"),
    block=st.integers(0, 1),
    head=st.integers(0, 3),
    src_frac=st.floats(0.0, 1.0, exclude_max=True),
    value=st.floats(0.125, 1.0),
)
def test_an_ungrouped_kv_edge_reaches_only_its_query_head(arch, qkv, block, head, src_frac, value):
    """An edge into query head ``h``'s K (V) input gives head ``h`` the output that the same
    edge into the grouped K (V) input of its key/value head ``h // 2`` gives it (the
    grouped model computes per key/value head, without any ungrouping), and leaves the
    other heads of the block as in the clean run."""
    ungrouped, grouped = pair(arch)
    clean, patch_u, patch_g, z_clean = corrupt_patches(arch)
    name = f"blocks.{block}.hook_{qkv}_input"
    src = int(src_frac * ungrouped.dest_modules[name].mask_shape[-1])
    um = ungrouped.new_masks(0.0, dtype=torch.float64)
    um[name][head, src] = value
    gm = grouped.new_masks(0.0, dtype=torch.float64)
    gm[name][head // GROUPS, src] = value
    z_u = z_of(ungrouped, block, clean, um, patch_u)
    z_g = z_of(grouped, block, clean, gm, patch_g)
    torch.testing.assert_close(z_u[:, :, head], z_g[:, :, head], atol=1e-12, rtol=0)
    others = [h for h in range(4) if h != head]
    torch.testing.assert_close(z_u[:, :, others], z_clean[block][:, :, others], atol=1e-12, rtol=0)
    assert (z_u[:, :, head] - z_clean[block][:, :, head]).abs().max() > 1e-9  # the edge mattered


@pytest.mark.parametrize("qkv", ["k", "v"])
def test_patching_every_query_head_of_a_group_is_patching_the_grouped_input(qkv):
    """Query heads 2 and 3 share key/value head 1: an edge into both their ungrouped K (V)
    inputs is that edge into the grouped K (V) input of head 1, on the whole output."""
    ungrouped, grouped = pair("qwen2")
    clean, corrupt, _ = prompts(3)
    name = f"blocks.1.hook_{qkv}_input"
    results = []
    for pm, heads in ((grouped, [1]), (ungrouped, [2, 3])):
        masks = pm.new_masks(0.0, dtype=torch.float64)
        masks[name][heads, 0] = 1.0  # Resid Start
        masks[name][heads, 3] = 0.5  # A0.2
        results.append(pm.run_patched(clean, masks, pm.src_outs(corrupt).clone()))
    torch.testing.assert_close(results[1], results[0], atol=1e-10, rtol=0)
    assert (results[0] - grouped(clean)).abs().max() > 1e-4


@pytest.mark.parametrize("arch", GQA)
def test_ungrouped_bridge_has_mibs_graph_and_files(arch, tmp_path):
    pm = pair(arch)[0]
    _, names = mib_graph_names(2, 4)
    assert pm.n_edges == len(names)
    assert sorted(mib_edge_name(e) for e in pm.edges) == sorted(names)
    gen = torch.Generator().manual_seed(0)
    scores = {n: torch.randn(m.mask_shape, generator=gen) for n, m in pm.dest_modules.items()}
    circuit = set(pm.edges[::5])
    save_mib_json(tmp_path / "g.json", pm, scores, circuit)
    back, back_circuit = load_mib_json(tmp_path / "g.json", pm)
    assert back_circuit == circuit
    for n in scores:
        torch.testing.assert_close(back[n], scores[n], atol=0, rtol=0)


# ------------------------------------------------------------------ EAP
@pytest.mark.parametrize("arch", GQA)
def test_eap_on_ungrouped_bridge_is_the_closed_form(arch):
    pm = pair(arch)[0]
    loader = random_loader(seed=5, n=3, seq=7)
    got = edge_attribution_patching_prune_scores(pm, loader, progress=False)
    want = reference_eap_scores(pm, loader)
    scale = max(float(v.abs().max()) for v in want.values())
    assert scale > 1e-4
    for n in want:
        torch.testing.assert_close(got[n].double(), want[n], atol=1e-9 * scale, rtol=0)
    # ungrouped K/V scores split the grouped ones: the scores of query heads 2h and 2h+1
    # sum to the score of key/value head h (a gradient sums over the heads reading an
    # input). The bridge's softmax runs in float32, hence 1e-6, not float64's 1e-12.
    grouped = edge_attribution_patching_prune_scores(pair(arch)[1], loader, progress=False)
    for qkv in "kv":
        name = f"blocks.1.hook_{qkv}_input"
        summed = got[name].double().unflatten(0, (2, GROUPS)).sum(1)
        torch.testing.assert_close(summed, grouped[name].double(), atol=1e-6 * scale, rtol=0)


@requires_hooked
@pytest.mark.parametrize("arch", GQA)
def test_ungrouped_bridge_equals_ungrouped_hooked_transformer(arch):
    """TransformerLens' own ungrouped HookedTransformer of the same random Hugging Face
    model (what MIB loads): the same patched outputs and EAP scores, up to the float32
    rotary angles TransformerLens and Hugging Face compute differently."""
    b = pair(arch)[0]
    h = patchable_model(random_hooked_transformer(arch=arch, seed=0, **SHAPE), ungroup_kv=True)
    assert [m.mask_shape for m in h.dest_modules.values()] == [m.mask_shape for m in b.dest_modules.values()]
    clean, corrupt, gen = prompts(6)
    masks_b = {n: torch.rand(m.mask_shape, generator=gen, dtype=torch.float64)
               for n, m in b.dest_modules.items()}  # fmt: skip
    masks_h = dict(zip(h.dest_modules, masks_b.values()))
    got = b.run_patched(clean, masks_b, b.src_outs(corrupt).clone())
    want = h.run_patched(clean, masks_h, h.src_outs(corrupt).clone())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    loader = random_loader(seed=7, n=3, seq=7)
    sb = edge_attribution_patching_prune_scores(b, loader, progress=False)
    sh = edge_attribution_patching_prune_scores(h, loader, progress=False)
    scale = max(float(v.abs().max()) for v in sh.values())
    for nb, nh in zip(sb, sh):
        torch.testing.assert_close(sb[nb].double(), sh[nh].double(), atol=1e-5 * scale, rtol=0)


# ------------------------------------------------------------------ refusals
def test_a_bridge_that_cannot_be_ungrouped_is_refused_naming_the_block():
    model = bridge("llama")
    model.blocks[1].attn.original_component.num_key_value_groups = 3
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"blocks\.1\.attn \(LlamaAttention\).*num_key_value_groups is 3.*ungroup_kv=False"):
        patchable_model(model, ungroup_kv=True)
    assert not bridge_kv_ungrouped(model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_an_ungrouping_that_changes_the_logits_is_undone_and_refused(monkeypatch):
    """Repeating the key/value heads in the wrong order (tiled, not each head in place)
    changes the unpatched model; the check catches it and puts everything back."""
    model = bridge("qwen2")
    tokens = prompts(1)[0]
    with torch.no_grad():
        before = model(tokens)
    monkeypatch.setattr(
        ungroup_module, "repeat_kv_heads", lambda w, groups, d_head: w.repeat(groups, *([1] * (w.dim() - 1)))
    )
    with pytest.raises(ValueError, match="logits changed.*ungroup_kv=False"):
        set_bridge_ungrouped_kv(model, True)
    assert not bridge_kv_ungrouped(model) and not getattr(model.cfg, "ungroup_grouped_query_attention", False)
    for b in model.blocks:
        assert type(b.attn.k.original_component) is torch.nn.Linear
        assert b.attn.original_component.num_key_value_groups == GROUPS
        assert b.attn.config.n_key_value_heads == 2
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), before, atol=0, rtol=0)
