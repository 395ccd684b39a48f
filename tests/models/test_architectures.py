"""Bridges over Hugging Face architectures patch exactly, on random float64 weights:
GPT-2, GPT-NeoX/Pythia (parallel attention and MLP, partial rotary), Llama 3 (grouped-query
attention), Qwen 2.5 (grouped-query attention, Q/K/V biases) and Gemma 2.

For each architecture the graph is complete (every destination's input is a constant plus
the sum of the outputs of the sources with an edge into it), random fractional masks patch
like the independent per-edge patcher of ``reference.py``, and the EAP scores are that
patcher's mask gradients.

Gemma 2's block adds ``post_attention_layernorm(sum of head outputs)`` to the residual
stream (TransformerLens: ``blocks.i.ln1_post``, behind ``hook_attn_out``). That RMSNorm
scales every dimension by a per-position factor, so each head's output is read as its
exact share of the normed sum (``edgewise.models.post_norm``), and the graph stays exact;
a centred post-norm (LayerNorm) would not split and is refused.
"""

from __future__ import annotations

import pytest
import torch

from edgewise import mask_gradient_prune_scores, patchable_model
from edgewise.models import random_bridge

from reference import reference_patched_logits
from util import VOCAB, grad_tol, random_loader

EXACT = {"gpt2": None, "neox": None, "llama": 2, "qwen2": 2, "gemma2": 2}
"""The architectures patched exactly, with their number of key/value heads."""


def tol(arch: str, atol: float) -> float:
    """``atol``, or 1e-6 on Gemma 2: Hugging Face's Gemma2RMSNorm normalises in float32 even
    for float64 weights, so results that differ in float64 rounding only can round to
    neighbouring float32 values after any of its norms."""
    return 1e-6 if arch == "gemma2" else atol

_MODELS: dict[tuple[str, int | None], object] = {}


def bridge(arch: str, seed: int = 0):
    return random_bridge(arch, n_layers=2, n_heads=4, d_head=4, d_vocab=VOCAB,
                         n_kv_heads=EXACT[arch], dtype=torch.float64, seed=seed)


def patchable(arch: str, seq_len: int | None = None):
    """One patchable model per architecture and ``seq_len`` for the whole module (the tests
    only read it)."""
    key = (arch, seq_len)
    if key not in _MODELS:
        _MODELS[key] = patchable_model(bridge(arch), seq_len=seq_len)
    return _MODELS[key]


def prompts(seed: int, batch: int = 3, seq: int = 5):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(3, VOCAB, (batch, seq), generator=gen),
            torch.randint(3, VOCAB, (batch, seq), generator=gen), gen)


def dest_inputs(pm, tokens) -> dict[str, torch.Tensor]:
    """The unpatched input of every destination module, read at TransformerLens' own
    hooks (``hook_q_input`` per head, ``hook_mlp_in``, the final residual)."""
    seen: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name):
        def hook(_m, _i, out):
            seen[name] = out.detach().clone()

        return hook

    with pm.adapter.flags(**pm.graph_flags):
        try:
            for name in pm.dest_modules:
                handles.append(pm.adapter.hook_point(name).register_forward_hook(keep(name)))
            with torch.no_grad():
                pm(tokens)
        finally:
            for h in handles:
                h.remove()
    return seen


@pytest.mark.parametrize("arch", sorted(EXACT))
def test_graph_is_complete(arch):
    """Each destination's input minus the sum of its edges' source outputs is the same
    for two unrelated prompts (biases only), while the inputs themselves differ: edges
    carry everything that depends on the prompt."""
    pm = patchable(arch)
    if EXACT[arch]:
        assert pm.dest_modules["blocks.0.hook_k_input"].mask_shape[-2] == EXACT[arch]
    inputs, rests = [], []
    for tokens in prompts(1)[:2]:
        inputs.append(dest_inputs(pm, tokens))
        rest = {n: x.clone() for n, x in inputs[-1].items()}
        outs = pm.src_outs(tokens)
        for e in pm.edges:
            x = rest[e.dest.module_name]
            if e.dest.head_idx is not None:
                x = x[:, :, e.dest.head_idx]
            x -= outs[e.src.src_idx]  # in place, through the view
        rests.append(rest)
    assert set(inputs[0]) == set(pm.dest_modules)
    for name in pm.dest_modules:
        torch.testing.assert_close(rests[0][name], rests[1][name], atol=1e-12, rtol=0)
        assert (inputs[0][name] - inputs[1][name]).abs().max() > 1e-3


@pytest.mark.parametrize("arch,seq_len", [(a, None) for a in sorted(EXACT)]
                         + [("neox", 5), ("qwen2", 5)])  # and edges per token position
def test_random_fractional_masks_match_reference(arch, seq_len):
    pm = patchable(arch, seq_len)
    clean, corrupt, gen = prompts(2)
    patch = pm.src_outs(corrupt).clone()
    masks = {n: torch.rand(m.mask_shape, generator=gen, dtype=torch.float64)
             for n, m in pm.dest_modules.items()}
    got = pm.run_patched(clean, masks, patch)
    want = reference_patched_logits(pm, clean, masks, patch)
    torch.testing.assert_close(got, want, atol=tol(arch, 1e-9), rtol=0)
    assert (got - pm(clean)).abs().max() > 1e-3  # the masks do change the output


@pytest.mark.parametrize("arch", sorted(EXACT))
def test_all_zero_is_clean_and_all_one_is_corrupt(arch):
    pm = patchable(arch)
    clean, corrupt, _ = prompts(3)
    patch = pm.src_outs(corrupt).clone()
    clean_logits, corrupt_logits = pm(clean), pm(corrupt)
    assert (clean_logits - corrupt_logits).abs().max() > 1e-2
    zero = pm.new_masks(0.0, dtype=torch.float64)
    torch.testing.assert_close(pm.run_patched(clean, zero, patch), clean_logits,
                               atol=tol(arch, 1e-10), rtol=0)
    one = pm.new_masks(1.0, dtype=torch.float64)
    torch.testing.assert_close(pm.run_patched(clean, one, patch), corrupt_logits,
                               atol=tol(arch, 1e-10), rtol=0)


@pytest.mark.parametrize("arch", sorted(EXACT))
def test_patching_only_the_final_residual_gives_the_corrupt_logits(arch):
    """All masks 1 reaches the corrupt run whatever the graph (every source then computes
    its corrupt output); patching only the edges into Resid End reaches it only if those
    edges carry the whole residual stream."""
    pm = patchable(arch)
    clean, corrupt, _ = prompts(4)
    patch = pm.src_outs(corrupt).clone()
    end = next(d.module_name for d in pm.dests if d.name == "Resid End")
    masks = pm.new_masks(0.0, dtype=torch.float64)
    masks[end] = torch.ones_like(masks[end])
    assert sum(int(m.sum()) for m in masks.values()) == len(pm.srcs)
    torch.testing.assert_close(pm.run_patched(clean, masks, patch), pm(corrupt),
                               atol=tol(arch, 1e-10), rtol=0)


@pytest.mark.parametrize("arch", sorted(EXACT))
def test_eap_scores_are_gradients_of_the_reference(arch):
    pm = patchable(arch)
    loader = random_loader(seed=5, n=3)
    got = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", mask_val=0.0,
                                     progress=False)
    want = {n: torch.zeros(m.mask_shape, dtype=torch.float64) for n, m in pm.dest_modules.items()}
    for b in loader:
        masks = pm.new_masks(0.0, requires_grad=True, dtype=torch.float64)
        logits = reference_patched_logits(pm, b.clean, masks, pm.src_outs(b.corrupt).clone())
        logits = logits[pm.out_slice]
        right = torch.stack([logits[i, a].mean() for i, a in enumerate(b.answers)])
        wrong = torch.stack([logits[i, a].mean() for i, a in enumerate(b.wrong_answers)])
        (-(right - wrong).mean()).backward()
        for n in want:
            want[n] += masks[n].grad
    scale = max(v.abs().max().item() for v in want.values())
    assert scale > 1e-4
    assert set(got) == set(want)
    for n in want:
        assert got[n].dtype == torch.float64
        torch.testing.assert_close(got[n], want[n], atol=grad_tol(pm, tol(arch, 1e-9)) * scale,
                                   rtol=0)  # fmt: skip


def _heads_and_attn_out(model, tokens, layer: int = 0):
    """Layer ``layer``'s head outputs summed (``z @ W_O``), what the block adds to the
    residual stream (``hook_attn_out``) and the attention output (``attn.hook_out``)."""
    names = [f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_attn_out",
             f"blocks.{layer}.attn.hook_out"]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    w_o = model.blocks[layer].attn.W_O  # [heads, d_head, d_model]
    z = cache[names[0]].reshape(*tokens.shape, *w_o.shape[:2])  # [batch, pos, heads, d_head]
    heads = torch.einsum("bphk,hkd->bpd", z, w_o)
    return heads, cache[names[1]], cache[names[2]]


@pytest.mark.parametrize("arch", sorted(EXACT))
def test_head_outputs_sum_to_what_the_block_adds_except_through_gemma2s_norm(arch):
    """On the others the block adds sum_h z_h @ W_O[h] plus a constant; Gemma 2 adds the
    RMSNorm of that sum (post_attention_layernorm), which the patched graph splits."""
    model = bridge(arch)
    clean, corrupt, _ = prompts(6)
    (h_clean, out_clean, attn_clean), (h_corrupt, out_corrupt, _) = (
        _heads_and_attn_out(model, clean), _heads_and_attn_out(model, corrupt))
    gap = (out_clean - h_clean) - (out_corrupt - h_corrupt)
    if arch != "gemma2":
        assert gap.abs().max() < 1e-12
        return
    assert gap.abs().max() > 0.1
    norm = model.original_model.model.layers[0].post_attention_layernorm
    with torch.no_grad():
        torch.testing.assert_close(out_clean, norm(attn_clean), atol=1e-12, rtol=0)
        torch.testing.assert_close(attn_clean, h_clean, atol=1e-12, rtol=0)  # Gemma has no b_O

