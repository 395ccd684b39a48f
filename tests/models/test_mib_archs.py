"""MIB's four architectures end to end on tiny random models: Llama 3, Qwen 2.5 and Gemma 2
as ``HookedTransformer`` (TransformerLens' own conversion of a random Hugging Face model)
and as bridges, grouped-query attention ungrouped the way MIB loads its models (each query
head its own K/V input), and Gemma 2's norms after attention and MLP, soft-capping and
sliding window. Every patched pass is compared with the independent per-edge patcher of
``reference.py``, every EAP score with its closed form."""

from __future__ import annotations

import pytest
import torch

from edgewise import edge_attribution_patching_prune_scores, patchable_model
from edgewise.io.files import load_mib_json, mib_edge_name, save_mib_json
from edgewise.mib.submission import mib_graph_names
from edgewise.models import (
    random_bridge,
    random_hf_model,
    random_hooked_transformer,
)

from reference import reference_eap_scores, reference_patched_logits
from util import VOCAB, hooked_case, hooked_only, random_loader

GQA = ("llama", "qwen2", "gemma2")
SHAPE = dict(n_layers=2, n_heads=4, d_head=4, d_vocab=VOCAB, n_kv_heads=2, dtype=torch.float64)


def hooked(arch: str, seed: int = 0):
    return random_hooked_transformer(arch=arch, seed=seed, **SHAPE)


def prompts(seed: int, batch: int = 3, seq: int = 7):
    """Clean and corrupt prompts longer than Gemma 2's window of 4."""
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randint(3, VOCAB, (batch, seq), generator=gen),
        torch.randint(3, VOCAB, (batch, seq), generator=gen),
        gen,
    )


def fractional_masks(pm, gen):
    return {
        n: torch.rand(m.mask_shape, generator=gen, dtype=torch.float64)
        for n, m in pm.dest_modules.items()
    }


# ------------------------------------------------------------------ HookedTransformer archs
@hooked_only("edgewise's HookedTransformer builder random_hooked_transformer(arch=...); a "
             "bridge runs the Hugging Face model itself")
@pytest.mark.parametrize("arch", GQA)
def test_hooked_arch_computes_what_the_hugging_face_model_computes(arch):
    hf = random_hf_model(arch, seed=3, **{k: v for k, v in SHAPE.items()})
    ht = random_hooked_transformer(arch=arch, seed=3, **SHAPE)
    tokens = prompts(0)[0]
    with torch.no_grad():
        want = hf(tokens).logits
        got = ht(tokens)
    # TransformerLens and Hugging Face compute rotary angles in float32: 1e-6, not 1e-15
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert ht.cfg.original_architecture.lower().startswith(arch[:4])


@hooked_only("the argument check of random_hooked_transformer(arch=...)")
def test_hooked_arch_refuses_shape_arguments_the_architecture_fixes():
    with pytest.raises(ValueError, match="normalization_type"):
        random_hooked_transformer(arch="llama", normalization_type="RMS")


@hooked_only("the HookedTransformer conversions; bridges: test_architectures.py::"
             "test_eap_scores_are_gradients_of_the_reference, test_bridge_ungroup.py::"
             "test_eap_on_ungrouped_bridge_is_the_closed_form")
@pytest.mark.parametrize("arch", GQA)
def test_eap_on_hooked_arch_is_the_closed_form(arch):
    pm = patchable_model(hooked(arch))
    loader = random_loader(seed=5, n=3, seq=7)
    got = edge_attribution_patching_prune_scores(pm, loader, progress=False)
    want = reference_eap_scores(pm, loader)
    scale = max(float(v.abs().max()) for v in want.values())
    assert scale > 1e-4
    for n in want:
        torch.testing.assert_close(got[n].double(), want[n], atol=1e-9 * scale, rtol=0)


# ------------------------------------------------------------------ ungrouped K/V (MIB)
@hooked_only("TransformerLens' ungroup_grouped_query_attention; bridges: test_bridge_ungroup.py::"
             "test_ungrouped_bridge_has_mibs_graph_and_files")
@pytest.mark.parametrize("arch", GQA)
def test_ungrouped_graph_has_mibs_edges(arch, tmp_path):
    pm = patchable_model(hooked(arch), ungroup_kv=True)
    assert pm.dest_modules["blocks.1.hook_k_input"].mask_shape == (4, 1 + 4 + 1)
    _, names = mib_graph_names(2, 4)
    assert pm.n_edges == len(names)
    assert sorted(mib_edge_name(e) for e in pm.edges) == sorted(names)
    gen = torch.Generator().manual_seed(0)
    scores = {n: torch.randn(m.mask_shape, generator=gen) for n, m in pm.dest_modules.items()}
    circuit = set(pm.edges[::7])
    save_mib_json(tmp_path / "g.json", pm, scores, circuit)
    back, back_circuit = load_mib_json(tmp_path / "g.json", pm)
    assert back_circuit == circuit
    for n in scores:
        torch.testing.assert_close(back[n], scores[n], atol=0, rtol=0)


@pytest.mark.parametrize("kind", [pytest.param("hooked", marks=hooked_case), "bridge"])
def test_grouped_graph_is_refused_by_the_mib_format_naming_the_fix(kind, tmp_path):
    pm = patchable_model(hooked("llama") if kind == "hooked" else random_bridge("llama", **SHAPE))
    with pytest.raises(ValueError, match="ungroup_kv=True"):
        save_mib_json(tmp_path / "g.json", pm, pm.new_masks(0.0))


@hooked_only("TransformerLens' ungroup_grouped_query_attention; bridges: test_bridge_ungroup.py::"
             "test_ungrouped_bridge_patching_matches_reference")
@pytest.mark.parametrize("arch", GQA)
def test_ungrouped_patching_matches_reference(arch):
    pm = patchable_model(hooked(arch), ungroup_kv=True)
    clean, corrupt, gen = prompts(2)
    patch = pm.src_outs(corrupt).clone()
    masks = fractional_masks(pm, gen)
    got = pm.run_patched(clean, masks, patch)
    want = reference_patched_logits(pm, clean, masks, patch)
    torch.testing.assert_close(got, want, atol=1e-9, rtol=0)
    assert (got - pm(clean)).abs().max() > 1e-3


@hooked_only("TransformerLens' ungroup_grouped_query_attention; bridges: test_bridge_ungroup.py::"
             "test_patching_every_query_head_of_a_group_is_patching_the_grouped_input")
@pytest.mark.parametrize("qkv", ["k", "v"])
def test_patching_every_query_head_of_a_group_is_patching_the_grouped_input(qkv):
    """Query heads 2 and 3 share key/value head 1: patching an edge into both their
    ungrouped K (V) inputs is patching it into the grouped K (V) input of head 1."""
    grouped = patchable_model(hooked("qwen2"), ungroup_kv=False)
    ungrouped = patchable_model(hooked("qwen2"), ungroup_kv=True)
    clean, corrupt, gen = prompts(3)
    name = f"blocks.1.hook_{qkv}_input"
    results = []
    for pm, heads in ((grouped, [1]), (ungrouped, [2, 3])):
        masks = pm.new_masks(0.0, dtype=torch.float64)
        masks[name][heads, 0] = 1.0  # Resid Start
        masks[name][heads, 3] = 0.5  # A0.2
        results.append(pm.run_patched(clean, masks, pm.src_outs(corrupt).clone()))
    torch.testing.assert_close(results[1], results[0], atol=1e-10, rtol=0)
    assert (results[0] - grouped(clean)).abs().max() > 1e-4


# ------------------------------------------------------------------ Gemma 2
@pytest.mark.parametrize("kind", ["bridge", pytest.param("hooked", marks=hooked_case)])
def test_gemma2_patching_matches_reference(kind):
    model = random_bridge("gemma2", **SHAPE) if kind == "bridge" else hooked("gemma2")
    pm = patchable_model(model)
    clean, corrupt, gen = prompts(4)
    patch = pm.src_outs(corrupt).clone()
    masks = fractional_masks(pm, gen)
    got = pm.run_patched(clean, masks, patch)
    want = reference_patched_logits(pm, clean, masks, patch)
    # Hugging Face's Gemma2RMSNorm normalises in float32 even for float64 weights: results
    # equal in float64 arithmetic can round to neighbouring float32 values after it
    atol = 1e-6 if kind == "bridge" else 1e-9
    torch.testing.assert_close(got, want, atol=atol, rtol=0)
    assert (got - pm(clean)).abs().max() > 1e-3
    # all edges patched is the corrupt run; none is the clean run
    one, zero = pm.new_masks(1.0, dtype=torch.float64), pm.new_masks(0.0, dtype=torch.float64)
    torch.testing.assert_close(pm.run_patched(clean, one, patch), pm(corrupt), atol=atol, rtol=0)
    torch.testing.assert_close(pm.run_patched(clean, zero, patch), pm(clean), atol=atol, rtol=0)


@pytest.mark.parametrize("kind", ["bridge", pytest.param("hooked", marks=hooked_case)])
def test_gemma2_head_outputs_sum_to_what_the_block_adds(kind):
    """Read after the norm, the heads' outputs sum to ``hook_attn_out`` (what reaches the
    residual stream: on a bridge the output of ``ln1_post``), and the MLP's output is
    ``hook_mlp_out`` (after its norm)."""
    pm = patchable_model(hooked("gemma2") if kind == "hooked" else random_bridge("gemma2", **SHAPE))
    tokens = prompts(5)[0]
    names = [f"blocks.{b}.hook_{x}_out" for b in range(2) for x in ("attn", "mlp")]
    with torch.no_grad():
        _, cache = pm.wrapped_model.run_with_cache(tokens, names_filter=lambda n: n in names)
        outs = pm.src_outs(tokens)
    for b in range(2):
        heads = [s.src_idx for s in pm.srcs if s.block == b and s.kind == "attn"]
        mlp = next(s.src_idx for s in pm.srcs if s.block == b and s.kind == "mlp")
        torch.testing.assert_close(
            outs[heads].sum(0), cache[f"blocks.{b}.hook_attn_out"], atol=1e-12, rtol=0
        )
        torch.testing.assert_close(outs[mlp], cache[f"blocks.{b}.hook_mlp_out"], atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["bridge", pytest.param("hooked", marks=hooked_case)])
def test_a_centred_norm_of_the_summed_heads_is_refused_with_the_reason(kind):
    if kind == "hooked":
        from transformer_lens.components import LayerNorm

        model = hooked("gemma2")
        model.blocks[1].ln1_post = LayerNorm(model.cfg)
    else:  # Hugging Face's post_attention_layernorm, under the bridge's ln1_post
        model = random_bridge("gemma2", **SHAPE)
        model.blocks[1].ln1_post.set_original_component(torch.nn.LayerNorm(16, dtype=torch.float64))
    with pytest.raises(ValueError, match="centred norm \\(blocks.1.ln1_post, LayerNorm\\)"):
        patchable_model(model)
