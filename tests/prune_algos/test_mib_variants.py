"""MIB's edge-scoring variants and the gradient rules, each against an independent
computation: EAP-IG on activations (plain TransformerLens hooks; per-module completeness;
one step = EAP on the moved module's edges), clean-corrupted (plain hooks on both runs),
and the norm-scale / attention-pattern rules (a hand-written transformer forward)."""

from __future__ import annotations

import math

import pytest
import torch

from edgewise import patchable_model
from edgewise.models import (
    from_tl_weights,
    random_bridge,
    random_hooked_transformer,
    random_model,
)
from edgewise.prune_algos import (
    ALGORITHMS,
    clean_corrupted_prune_scores,
    eap_ig_activations_prune_scores,
    eap_ig_inputs_prune_scores,
    mask_gradient_prune_scores,
)
from edgewise.prune_algos.eap_ig_activations import module_output_hook
from edgewise.prune_algos.grad_rules import check_grad_rules, gradient_rules
from edgewise.prune_algos.loss import answer_loss, grad_values
from edgewise.runtime.ablation import batch_src_ablations
from edgewise.types import AblationType

from reference import capture_sources_and_dests, reference_eap_scores
from util import VOCAB, hooked_case, hooked_only, random_loader

MODELS = {
    "hooked": lambda: random_model(n_layers=2, d_vocab=VOCAB, dtype=torch.float64, seed=3),
    "bridge-gpt2": lambda: random_bridge("gpt2", d_vocab=VOCAB, dtype=torch.float64),
}


def _kinds():
    return [pytest.param("hooked", marks=hooked_case), "bridge-gpt2"]


def assert_scores_close(got, want, rel=1e-9):
    scale = max(v.abs().max().item() for v in want.values())
    assert scale > 0
    for name in want:
        torch.testing.assert_close(
            got[name].double(), want[name].double(), atol=rel * scale + 1e-12, rtol=0
        )


def _src_acts(pm, tokens):
    """Each source's output ``{src_idx: [batch, seq, d_model]}`` from TransformerLens'
    own hooks (``hook_result`` per head), without edgewise's source reading."""
    _, acts = capture_sources_and_dests(pm, tokens)
    out = {}
    for s in pm.srcs:
        a = acts[s.module_name].detach()
        out[s.src_idx] = a if s.head_idx is None else a[:, :, s.head_idx]
    return out


def _edge_scores(pm, grads, delta):
    """``sum grad_d . delta_s`` per edge, one edge at a time."""
    scores = {n: torch.zeros(m.mask_shape, dtype=torch.float64) for n, m in pm.dest_modules.items()}
    for e in pm.edges:
        g = grads[e.dest.module_name]
        if g is None:
            continue
        if e.dest.head_idx is not None:
            g = g[:, :, e.dest.head_idx]
        d = delta[e.src.src_idx]
        if e.seq_idx is not None:
            g, d = g[:, e.seq_idx], d[:, e.seq_idx]
        scores[e.dest.module_name][e.patch_idx] += (g.double() * d.double()).sum()
    return scores


def _grads_at_dests(pm, tokens, batch, extra_hooks=()):
    """The loss's gradient at every destination input, TransformerLens' per-head hooks,
    with ``extra_hooks`` ``(hook name, fn)`` registered first."""
    handles = [pm.adapter.hook_point(n).register_forward_hook(fn) for n, fn in extra_hooks]
    try:
        logits, acts = capture_sources_and_dests(pm, tokens)
    finally:
        for h in handles:
            h.remove()
    loss = answer_loss(grad_values(logits, "logit"), batch, "avg_diff")
    names = list(pm.dest_modules)
    grads = torch.autograd.grad(loss, [acts[n] for n in names], allow_unused=True)
    return dict(zip(names, grads))


def reference_ig_activations(pm, loader, m, modules=None):
    """MIB's EAP-IG-activations with plain hooks: replace one module's output hook by a
    constant on the clean -> corrupt line, read the destinations' gradients."""
    modules = list(pm.graph.src_modules) if modules is None else modules
    scores = {
        n: torch.zeros(mm.mask_shape, dtype=torch.float64) for n, mm in pm.dest_modules.items()
    }
    for batch in loader:
        clean, corrupt = _src_acts(pm, batch.clean), _src_acts(pm, batch.corrupt)
        delta = {i: corrupt[i] - clean[i] for i in clean}
        for mod in modules:
            step = sum(delta[i] for i in range(mod.src_lo, mod.src_hi))
            for k in range(1, m + 1):
                alpha = k / m

                def hook(_m, _i, out, alpha=alpha, step=step):
                    return (out + (1 - alpha) * step).detach()

                grads = _grads_at_dests(pm, batch.clean, batch, [(module_output_hook(mod), hook)])
                for n, s in _edge_scores(pm, grads, delta).items():
                    scores[n] += s / (len(modules) * m)
    return scores


@pytest.mark.parametrize("kind", _kinds())
def test_ig_activations_equals_plain_hooks(kind):
    pm = patchable_model(MODELS[kind]())
    loader = random_loader(seed=4, n=2, batch_size=2)
    # every kind of module (embeddings, attention, MLP) on the bridge; all on the faster model
    modules = None if kind == "hooked" else list(pm.graph.src_modules[:3])
    names = None if modules is None else [mod.module_name for mod in modules]
    got = eap_ig_activations_prune_scores(
        pm, loader, integrated_grad_samples=2, sources=names, scale="sum", progress=False
    )
    assert_scores_close(got, reference_ig_activations(pm, loader, 2, modules))


@pytest.mark.parametrize("kind", _kinds())
def test_ig_activations_with_positions_equals_plain_hooks(kind):
    pm = patchable_model(MODELS[kind](), seq_len=5)
    loader = random_loader(seed=5, n=2, batch_size=2, seq_len_edges=True)
    got = eap_ig_activations_prune_scores(pm, loader, integrated_grad_samples=2, scale="sum",
                                          progress=False)  # fmt: skip
    assert_scores_close(got, reference_ig_activations(pm, loader, 2))


def _out_of(pm, module):
    return [e for e in pm.edges if module.src_lo <= e.src.src_idx < module.src_hi]


@pytest.mark.parametrize("kind", _kinds())
def test_ig_activations_one_step_is_eap_on_the_moved_module(kind):
    """With m = 1 the moved module sits at its clean value: the gradient downstream of it
    is the clean one, so the edges out of it score exactly as in EAP."""
    pm = patchable_model(MODELS[kind]())
    loader = random_loader(seed=6, n=2, batch_size=2)
    eap = reference_eap_scores(pm, loader)
    for module in pm.graph.src_modules:
        got = eap_ig_activations_prune_scores(
            pm, loader, integrated_grad_samples=1, sources=[module.module_name], scale="sum",
            progress=False,
        )  # fmt: skip
        for e in _out_of(pm, module):
            want = float(eap[e.dest.module_name][e.patch_idx])
            assert float(got[e.dest.module_name][e.patch_idx]) == pytest.approx(want, abs=1e-10)


def _loss_sum(pm, loader, masks_fn):
    patches = batch_src_ablations(pm, loader, AblationType.RESAMPLE, "corrupt")
    total = 0.0
    with torch.no_grad():
        for b in loader:
            logits = pm.run_patched(b.clean, masks_fn(), patches[b.key])[pm.out_slice]
            total += answer_loss(grad_values(logits, "logit"), b, "avg_diff").item()
    return total


@pytest.mark.parametrize("kind", _kinds())
def test_ig_activations_completeness_per_module(kind):
    """With one module moved, its out-edges' scores are a left Riemann sum of
    d/dt L(clean + t (corrupt - clean)): they approach L(module ablated) - L(clean) like 1/m."""
    pm = patchable_model(MODELS[kind]())
    loader = random_loader(seed=7, n=3, batch_size=3)
    module = pm.graph.src_modules[1]  # block 0's attention: all its heads

    def ablated():
        masks = pm.new_masks(0.0)
        for e in _out_of(pm, module):
            masks[e.dest.module_name][e.patch_idx] = 1.0
        return masks

    delta = _loss_sum(pm, loader, ablated) - _loss_sum(pm, loader, lambda: pm.new_masks(0.0))
    assert abs(delta) > 1e-3
    errors = []
    for m in (4, 32):
        got = eap_ig_activations_prune_scores(
            pm, loader, integrated_grad_samples=m, sources=[module.module_name], scale="sum",
            progress=False,
        )  # fmt: skip
        total = sum(float(got[e.dest.module_name][e.patch_idx]) for e in _out_of(pm, module))
        errors.append(abs(total - delta))
    assert errors[1] < errors[0] / 4  # first order in 1/m
    assert errors[1] < 0.05 * abs(delta)


def reference_clean_corrupted(pm, loader):
    scores = {n: torch.zeros(m.mask_shape, dtype=torch.float64) for n, m in pm.dest_modules.items()}
    for batch in loader:
        clean, corrupt = _src_acts(pm, batch.clean), _src_acts(pm, batch.corrupt)
        delta = {i: corrupt[i] - clean[i] for i in clean}
        for tokens in (batch.clean, batch.corrupt):
            for n, s in _edge_scores(pm, _grads_at_dests(pm, tokens, batch), delta).items():
                scores[n] += s / 2
    return scores


@pytest.mark.parametrize("kind", _kinds())
def test_clean_corrupted_equals_plain_hooks(kind):
    pm = patchable_model(MODELS[kind]())
    loader = random_loader(seed=8, n=4, batch_size=2)  # two batches: scores add up
    got = clean_corrupted_prune_scores(pm, loader, scale="sum", progress=False)
    assert_scores_close(got, reference_clean_corrupted(pm, loader))
    # its clean half is EAP: the average with the corrupt half differs from EAP
    eap = reference_eap_scores(pm, loader)
    assert any(not torch.allclose(got[n].double(), eap[n]) for n in eap)


@pytest.mark.parametrize("kind", _kinds())
def test_clean_corrupted_is_the_mean_of_eap_ig_inputs_two_endpoints(kind):
    """EAP-IG on inputs with m = 1 takes the clean end (k = 1: EAP) or, as MIB's code,
    the corrupt end (k = 0): their mean is clean-corrupted."""
    pm = patchable_model(MODELS[kind]())
    loader = random_loader(seed=14, n=2, batch_size=2)
    kw = {"integrated_grad_samples": 1, "scale": "sum", "progress": False}
    clean_end = eap_ig_inputs_prune_scores(pm, loader, endpoint="clean", **kw)
    corrupt_end = eap_ig_inputs_prune_scores(pm, loader, endpoint="corrupt", **kw)
    both = clean_corrupted_prune_scores(pm, loader, scale="sum", progress=False)
    assert_scores_close({n: (clean_end[n] + corrupt_end[n]) / 2 for n in both}, both)
    assert_scores_close(clean_end, reference_eap_scores(pm, loader))


# ----------------------------------------------------------------------- gradient rules
def _ln(x, w, b, eps, freeze):
    x = x - x.mean(-1, keepdim=True)
    scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return x / (scale.detach() if freeze else scale) * w + b


def random_ln_weights(seed=9):
    """TransformerLens-format weights of a 2-layer attention-only LayerNorm model."""
    d, h, dh, n_ctx = 8, 2, 4, 16
    shapes = {"embed.W_E": (VOCAB, d), "pos_embed.W_pos": (n_ctx, d), "unembed.W_U": (d, VOCAB),
              "unembed.b_U": (VOCAB,), "ln_final.w": (d,), "ln_final.b": (d,)}  # fmt: skip
    for layer in range(2):
        a = f"blocks.{layer}.attn."
        shapes.update({a + "W_Q": (h, d, dh), a + "W_K": (h, d, dh), a + "W_V": (h, d, dh),
                       a + "W_O": (h, dh, d), a + "b_Q": (h, dh), a + "b_K": (h, dh),
                       a + "b_V": (h, dh), a + "b_O": (d,),
                       f"blocks.{layer}.ln1.w": (d,), f"blocks.{layer}.ln1.b": (d,)})  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    w = {k: 0.5 * torch.randn(sh, generator=gen, dtype=torch.float64) for k, sh in shapes.items()}
    for k in w:
        if k.endswith(".w"):  # LayerNorm gains around 1
            w[k] += 1.0
    cfg = dict(n_layers=2, d_model=d, n_heads=h, d_head=dh, d_vocab=VOCAB, n_ctx=n_ctx,
               attn_only=True, normalization_type="LN", act_fn=None, dtype=torch.float64)  # fmt: skip
    return cfg, w


def ln_model(kind):
    """The model of :func:`random_ln_weights` of ``kind`` (``"hooked"`` or a GPT-2 bridge)."""
    cfg, w = random_ln_weights()
    if kind == "hooked":
        return from_tl_weights(cfg, w, kind="hooked")
    # GPT-2 has a second norm in each block; it reads only the (absent) MLP
    ln2 = {f"blocks.{i}.ln2.{p}": torch.ones(8, dtype=torch.float64) for i in range(2) for p in "wb"}
    return from_tl_weights(cfg, {**w, **ln2}, kind="bridge")


def manual_forward(w, tokens, norm_scale=False, attention_pattern=False, n_heads=2, eps=1e-5):
    """The 2-layer attention-only LayerNorm transformer written out by hand from its
    weights ``w``: logits, source outputs, destination inputs."""
    p = tokens.shape[1]
    # a leaf that needs a gradient, so that every destination input has one
    resid = (w["embed.W_E"][tokens] + w["pos_embed.W_pos"][:p]).requires_grad_()
    srcs, dests = [resid], {}
    causal = torch.ones(p, p, dtype=torch.bool).tril()
    for layer in range(2):
        a, ln = f"blocks.{layer}.attn.", f"blocks.{layer}.ln1."
        ins = {x: resid[:, :, None, :].repeat(1, 1, n_heads, 1) for x in "QKV"}
        proj = {}
        for x in "QKV":
            dests[(layer, x.lower())] = ins[x]
            normed = _ln(ins[x], w[ln + "w"], w[ln + "b"], eps, norm_scale)
            proj[x] = torch.einsum("bphd,hde->bphe", normed, w[a + "W_" + x]) + w[a + "b_" + x]
        d_head = proj["Q"].shape[-1]
        att = torch.einsum("bqhe,bkhe->bhqk", proj["Q"], proj["K"]) / math.sqrt(d_head)
        pattern = att.masked_fill(~causal, float("-inf")).softmax(-1)
        if attention_pattern:
            pattern = pattern.detach()
        z = torch.einsum("bhqk,bkhe->bqhe", pattern, proj["V"])
        heads = torch.einsum("bqhe,hed->bqhd", z, w[a + "W_O"])
        srcs += [heads[:, :, h] for h in range(n_heads)]
        resid = resid + heads.sum(2) + w[a + "b_O"]
    dests[("end", None)] = resid
    normed = _ln(resid, w["ln_final.w"], w["ln_final.b"], eps, norm_scale)
    return normed @ w["unembed.W_U"] + w["unembed.b_U"], srcs, dests


def manual_eap(pm, w, loader, **rules):
    key = {}
    for name, mod in pm.dest_modules.items():
        key[name] = ("end", None) if mod.kind == "resid" else (mod.block, mod.qkv)
    scores = {n: torch.zeros(m.mask_shape, dtype=torch.float64) for n, m in pm.dest_modules.items()}
    for batch in loader:
        with torch.no_grad():
            _, clean, _ = manual_forward(w, batch.clean)
            _, corrupt, _ = manual_forward(w, batch.corrupt)
        delta = {i: (c - s).detach() for i, (s, c) in enumerate(zip(clean, corrupt))}
        logits, _, dests = manual_forward(w, batch.clean, **rules)
        loss = answer_loss(grad_values(logits[:, -1], "logit"), batch, "avg_diff")
        names = list(pm.dest_modules)
        grads = torch.autograd.grad(loss, [dests[key[n]] for n in names], allow_unused=True)
        for n, s in _edge_scores(pm, dict(zip(names, grads)), delta).items():
            scores[n] += s
    return scores


RULES = {
    "none": {},
    "norm_scale": {"norm_scale": True},
    "attention_pattern": {"attention_pattern": True},
    "both": {"norm_scale": True, "attention_pattern": True},
}


@pytest.mark.parametrize("kind", _kinds())
@pytest.mark.parametrize("rules", sorted(RULES))
def test_grad_rules_equal_hand_written_backward(rules, kind):
    _, w = random_ln_weights()
    pm = patchable_model(ln_model(kind))
    loader = random_loader(seed=10, n=4, batch_size=2)
    names = [r for r, on in (("norm_scale", "norm_scale" in RULES[rules]),
                             ("attention_pattern", "attention_pattern" in RULES[rules])) if on]  # fmt: skip
    got = mask_gradient_prune_scores(
        pm, loader, None, "logit", "avg_diff", mask_val=0.0, grad_rules=names, progress=False
    )
    want = manual_eap(pm, w, loader, **RULES[rules])
    assert_scores_close(got, want)
    if "attention_pattern" in names:  # nothing reaches queries and keys
        for n, mod in pm.dest_modules.items():
            if mod.qkv in ("q", "k"):
                assert not got[n].any()
    if names:  # the rule changes the scores
        plain = manual_eap(pm, w, loader)
        assert any(not torch.allclose(got[n].double(), plain[n]) for n in plain)


@pytest.mark.parametrize("kind", _kinds())
def test_grad_rules_reach_the_other_gradient_methods(kind):
    """IG on inputs, IG on activations and clean-corrupted take the same rules: with the
    rules at m = 1 (and the clean half), each equals its own ruled EAP part."""
    pm = patchable_model(MODELS[kind]())
    loader = random_loader(seed=11, n=2, batch_size=2)
    rules = ("attention_pattern", "norm_scale")
    eap = mask_gradient_prune_scores(
        pm, loader, None, "logit", "avg_diff", mask_val=0.0, grad_rules=rules, progress=False
    )
    ig = eap_ig_inputs_prune_scores(pm, loader, integrated_grad_samples=1, grad_rules=rules,
                                    endpoint="clean", scale="sum", progress=False)  # fmt: skip
    assert_scores_close(ig, eap)
    module = pm.graph.src_modules[0]
    act = eap_ig_activations_prune_scores(
        pm, loader, integrated_grad_samples=1, sources=[module.module_name], grad_rules=rules,
        scale="sum", progress=False,
    )  # fmt: skip
    for e in _out_of(pm, module):
        want = float(eap[e.dest.module_name][e.patch_idx])
        assert float(act[e.dest.module_name][e.patch_idx]) == pytest.approx(want, abs=1e-10)
    assert ALGORITHMS["eap-frozen"].defaults["grad_rules"] == rules


def test_registered_algorithms_call_the_functions():
    # the faster kind where it exists (a HookedTransformer on TransformerLens 3.x)
    pm = patchable_model(random_model(n_layers=1, d_vocab=VOCAB, dtype=torch.float64))
    loader = random_loader(seed=12, n=2, batch_size=2)
    got = ALGORITHMS["clean-corrupted"](pm, loader, progress=False)
    assert_scores_close(got, clean_corrupted_prune_scores(pm, loader, progress=False), rel=0)
    kw = {"integrated_grad_samples": 1, "sources": ["blocks.0.hook_mlp_out"], "progress": False}
    got = ALGORITHMS["eap-ig-activations"](pm, loader, **kw)
    want = eap_ig_activations_prune_scores(pm, loader, **kw)
    assert_scores_close(got, want, rel=0)


def test_bad_arguments_are_named():
    pm = patchable_model(MODELS["bridge-gpt2"]())
    loader = random_loader(seed=13, n=2, batch_size=2)
    with pytest.raises(ValueError, match="unknown gradient rule"):
        check_grad_rules(["norm"])
    with pytest.raises(ValueError, match="sources must name source modules"):
        eap_ig_activations_prune_scores(
            pm, loader, sources=["blocks.9.hook_mlp_out"], progress=False
        )
    with pytest.raises(ValueError, match="endpoint must be"):
        eap_ig_inputs_prune_scores(pm, loader, endpoint="middle", progress=False)
    with pytest.raises(ValueError, match="integrated_grad_samples"):
        eap_ig_activations_prune_scores(pm, loader, integrated_grad_samples=0, progress=False)


@hooked_only("compares with random_hooked_transformer(arch=...)'s hook_scale; bridges: "
             "test_norm_scale_on_rms_norm_bridges_is_the_frozen_scale_backward")
@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_norm_scale_on_a_bridge_equals_the_hooked_transformer(arch):
    """RMSNorm bridges (Gemma's with its ``1 + w`` gain) give the frozen-scale scores that a
    HookedTransformer converted from the same Hugging Face weights gives through its
    ``hook_scale``, and the rule changes them."""
    kw = {"n_layers": 2, "d_vocab": VOCAB, "dtype": torch.float64, "seed": 4}
    bridge = patchable_model(random_bridge(arch, **kw))
    hooked = patchable_model(random_hooked_transformer(arch=arch, **kw))
    loader = random_loader(seed=14, n=4, batch_size=2)
    run = {"grad_function": "logit", "answer_function": "avg_diff", "mask_val": 0.0,
           "progress": False}
    got = mask_gradient_prune_scores(bridge, loader, None, grad_rules=["norm_scale"], **run)
    want = mask_gradient_prune_scores(hooked, loader, None, grad_rules=["norm_scale"], **run)
    # Hugging Face's Llama and Gemma RMSNorms compute in float32 even for float64 weights,
    # so the two kinds agree to float32 rounding; the rule moves the scores 100x further
    assert_scores_close(got, want, rel=1e-5)
    plain = mask_gradient_prune_scores(bridge, loader, None, **run)
    scale = max(v.abs().max().item() for v in plain.values())
    assert max((got[n] - plain[n]).abs().max().item() for n in plain) > 1e-3 * scale


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_norm_scale_on_rms_norm_bridges_is_the_frozen_scale_backward(arch, monkeypatch):
    """On Llama and Gemma 2 bridges (RMSNorms, Gemma's with the ``1 + w`` gain) the rule's
    scores are the plain scores of the same model with every norm's ``1 / rms(x)``
    detached, written here as the forward of the bridge's norms and of the Hugging Face
    modules they wrap; and the rule changes them. One ``hook_attn_in`` input per head
    (``separate_qkv=False``): Q/K/V patched after the projection have edgewise's own
    backward through ``ln1``, which a replaced forward does not reach (that path:
    test_norm_scale_on_a_bridge_equals_the_hooked_transformer, TransformerLens 3.x)."""
    from transformer_lens.model_bridge.generalized_components.normalization import (
        NormalizationBridge,
    )
    from transformers.models.gemma2.modeling_gemma2 import Gemma2RMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    def frozen_scale(self: torch.nn.Module, x: torch.Tensor, **_: object) -> torch.Tensor:
        """The norm with its scale detached; a bridge's norm still fires its hook_in and
        hook_out (edgewise reads Gemma 2's heads after ``ln1_post``)."""
        bridge = isinstance(self, NormalizationBridge)
        raw = self.original_component if bridge else self
        x = self.hook_in(x) if bridge else x
        eps = getattr(raw, "variance_epsilon", getattr(raw, "eps", None))
        gain = raw.weight.float() + (1.0 if isinstance(raw, Gemma2RMSNorm) else 0.0)
        inv = torch.rsqrt(x.detach().float().pow(2).mean(-1, keepdim=True) + eps)
        out = (x.float() * inv * gain).type_as(x)
        return self.hook_out(out) if bridge else out

    model = random_bridge(arch, n_layers=2, n_heads=2, d_head=2, d_vocab=VOCAB,
                          dtype=torch.float64, seed=4)  # fmt: skip
    pm = patchable_model(model, separate_qkv=False)
    loader = random_loader(seed=14, n=4, batch_size=2)
    run = {"grad_function": "logit", "answer_function": "avg_diff", "mask_val": 0.0,
           "progress": False}
    got = mask_gradient_prune_scores(pm, loader, None, grad_rules=["norm_scale"], **run)
    plain = mask_gradient_prune_scores(pm, loader, None, **run)
    for cls in (NormalizationBridge, LlamaRMSNorm, Gemma2RMSNorm):
        monkeypatch.setattr(cls, "forward", frozen_scale)
    want = mask_gradient_prune_scores(pm, loader, None, **run)
    # the Hugging Face RMSNorms compute in float32 even for float64 weights
    assert_scores_close(got, want, rel=1e-5)
    scale = max(v.abs().max().item() for v in plain.values())
    assert max((got[n] - plain[n]).abs().max().item() for n in plain) > 1e-3 * scale


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_norm_scale_on_a_bridge_keeps_the_forward_and_removes_its_hooks(arch):
    """Inside the rule the bridge's logits are bit-identical, and after it no hook is left
    on any module."""
    model = random_bridge(arch, n_layers=2, d_vocab=VOCAB, dtype=torch.float64, seed=5)
    pm = patchable_model(model)
    tokens = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(6))
    hooks_before = {n: len(m._forward_hooks) for n, m in model.named_modules()}
    with pm.adapter.flags(**pm.graph_flags):  # the flags the rule's passes run with
        want = model(tokens)
    with gradient_rules(pm, ["norm_scale"]):
        got = model(tokens)
    assert torch.equal(got, want)
    assert {n: len(m._forward_hooks) for n, m in model.named_modules()} == hooks_before


@pytest.mark.parametrize("kind", _kinds())
def test_grad_rules_with_token_positions_and_a_memory_budget(kind):
    """Per-position edges, and passes split into single prompts and source blocks by a
    small memory budget, give the hand-written frozen backward too."""
    pm = patchable_model(ln_model(kind), seq_len=5)
    _, w = random_ln_weights()
    loader = random_loader(seed=15, n=2, batch_size=2, seq_len_edges=True)
    rules = ("attention_pattern", "norm_scale")
    want = manual_eap(pm, w, loader, norm_scale=True, attention_pattern=True)
    for budget in (None, 4096):
        got = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", mask_val=0.0,
                                         grad_rules=rules, max_memory=budget, progress=False)  # fmt: skip
        assert_scores_close(got, want)


# ------------------------------------------------------------------- MIB's scale
UNEVEN = {"n": 7, "batch_size": 3, "drop_last": False}  # batches of 3, 3 and 1 prompts

SCALED = {
    "mask_gradient eap": lambda pm, ld, **kw: mask_gradient_prune_scores(
        pm, ld, None, "logit", "avg_diff", mask_val=0.0, progress=False, **kw),
    "mask_gradient ig": lambda pm, ld, **kw: mask_gradient_prune_scores(
        pm, ld, None, "logit", "avg_diff", integrated_grad_samples=2, progress=False, **kw),
    "eap-ig-inputs": lambda pm, ld, **kw: eap_ig_inputs_prune_scores(
        pm, ld, integrated_grad_samples=2, progress=False, **kw),
    "eap-ig-activations": lambda pm, ld, **kw: eap_ig_activations_prune_scores(
        pm, ld, integrated_grad_samples=1, sources=["blocks.0.hook_mlp_out"], progress=False, **kw),
    "clean-corrupted": lambda pm, ld, **kw: clean_corrupted_prune_scores(
        pm, ld, progress=False, **kw),
}  # fmt: skip


@pytest.mark.parametrize("name", list(SCALED))
def test_mean_scale_is_the_sum_divided_by_the_prompts(name):
    """``scale="mean"`` is exactly the ``"sum"`` scores over 7, the prompts of batches of
    3, 3 and 1 (MIB divides by ``total_items``, the prompts it iterated)."""
    pm = patchable_model(random_model(n_layers=1, d_vocab=VOCAB, dtype=torch.float64, seed=5))
    loader = random_loader(seed=16, **UNEVEN)
    assert [b.clean.shape[0] for b in loader] == [3, 3, 1]
    summed = SCALED[name](pm, loader, scale="sum")
    mean = SCALED[name](pm, loader, scale="mean")
    assert max(float(t.abs().max()) for t in summed.values()) > 0
    for n in summed:
        assert torch.equal(mean[n], summed[n] / 7), n
    with pytest.raises(ValueError, match="scale must be 'sum'.*or 'mean'.*got 'avg'"):
        SCALED[name](pm, loader, scale="avg")


def test_mib_scale_weighs_each_prompt_by_one_over_its_batch_and_the_prompts():
    """MIB's reduction by hand: each batch's loss is its mean, the gradients add up, the
    total is divided by N. So prompt p of batch b weighs 1 / (|b| N): with batches of 3,
    3 and 1, the last prompt weighs three times the others. Per-prompt EAP scores come
    from the plain-hook reference on one prompt per batch."""
    pm = patchable_model(random_model(n_layers=1, d_vocab=VOCAB, dtype=torch.float64, seed=6))
    loader = random_loader(seed=17, **UNEVEN)
    single = random_loader(seed=17, n=7, batch_size=1)  # the same prompts, one per batch
    per_prompt = [reference_eap_scores(pm, [batch]) for batch in single]
    weights = [1 / 3] * 6 + [1.0]
    want = {n: sum(w * s[n] for w, s in zip(weights, per_prompt)) / 7 for n in per_prompt[0]}
    got = ALGORITHMS["eap"](pm, loader, progress=False, scale="mean")
    assert_scores_close(got, want)
    plain_mean = {n: sum(s[n] for s in per_prompt) / 7 for n in want}
    assert any(not torch.allclose(want[n], plain_mean[n]) for n in want)


def test_registry_scales_and_endpoints():
    """The MIB methods give MIB's scale and points by default; auto-circuit's keep the
    sum over batches; the others say whether export may rescale them."""
    mean = {"eap-ig-inputs", "eap-ig-activations", "clean-corrupted"}
    summed = {"eap", "ig", "ig-layer", "eap-frozen", "atp-star"}
    for name, algo in ALGORITHMS.items():
        want = "mean" if name in mean else "sum" if name in summed else None
        assert algo.score_scale() == want, name
    assert ALGORITHMS["eap-ig-inputs"].defaults["endpoint"] == "corrupt"
    assert ALGORITHMS["eap"].score_scale({"scale": "mean"}) == "mean"
    assert ALGORITHMS["atp-star"].score_scale({"scale": "mean"}) == "sum"  # takes none
