"""The field's model shapes (GPT-2 small, Pythia-1.4B, Qwen2.5-0.5B, Gemma-2-2B,
Llama-3.1-8B): parameter counts equal to the published ones, configs that build exactly
the counted parameters, both model kinds computing what the Hugging Face model computes
at a small scale, EAP on each equal to its closed form, and weights drawn in chunks and
in the target dtype equal to one float32 draw."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgewise import GraphSpec, build_graph, edge_attribution_patching_prune_scores, patchable_model
from edgewise.models.shapes import (
    SHAPES,
    draw_normal_,
    random_shape_hf_model,
    random_shape_model,
    shape_hf_config,
)

from reference import reference_eap_scores
from util import random_loader, requires_hooked

# Parameter counts as published for each checkpoint (model cards / safetensors metadata).
PUBLISHED = {"gpt2": 124_439_808, "pythia-1.4b": 1_414_647_808, "qwen2.5": 494_032_768,
             "gemma2": 2_614_341_888, "llama3": 8_030_261_248}  # fmt: skip
SMALL = dict(n_layers=2, scale=16, dtype=torch.float64)


@pytest.mark.parametrize("name", SHAPES)
def test_shape_parameter_count_is_the_published_one(name):
    assert SHAPES[name].n_params == PUBLISHED[name]


@pytest.mark.parametrize("name", SHAPES)
def test_full_config_builds_exactly_the_counted_parameters(name):
    import transformers as tf

    from edgewise.models.shapes import _HF_CLASS

    cfg = shape_hf_config(name)
    with torch.device("meta"):  # no memory: only the shapes
        hf = getattr(tf, _HF_CLASS[name])(cfg)
    hf.tie_weights()
    assert sum(p.numel() for p in hf.parameters()) == PUBLISHED[name]
    m = SHAPES[name]
    assert cfg.vocab_size == m.d_vocab and cfg.num_hidden_layers == m.n_layers


def _logits(model, tokens):
    with torch.no_grad():
        out = model(tokens) if not hasattr(model, "original_model") else model(
            tokens, return_type="logits")
    return out


@pytest.mark.parametrize("name", SHAPES)
@pytest.mark.parametrize("kind", ["bridge", pytest.param("hooked", marks=requires_hooked)])
def test_small_scale_model_computes_what_the_hugging_face_model_computes(name, kind):
    hf = random_shape_hf_model(name, seed=1, **SMALL)
    model = random_shape_model(name, kind, seed=1, **SMALL)
    tokens = torch.randint(3, hf.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = hf(tokens).logits
    # TransformerLens computes rotary angles in float32
    torch.testing.assert_close(_logits(model, tokens), want, atol=1e-5, rtol=0)
    assert model.cfg.n_layers == 2 and model.cfg.d_head == SHAPES[name].d_head // 16


@pytest.mark.parametrize("name", SHAPES)
def test_eap_on_each_shape_is_the_closed_form(name):
    m = SHAPES[name]
    pm = patchable_model(random_shape_model(name, n_layers=2, scale=16, dtype=torch.float64),
                         ungroup_kv=True)  # fmt: skip
    spec = GraphSpec(2, m.n_heads, m.n_heads, parallel_attn_mlp=name == "pythia-1.4b")
    assert pm.n_edges == build_graph(spec).n_edges  # every query head its own K/V input
    assert spec == dataclasses.replace(m, n_layers=2).spec  # what the memory model counts
    loader = random_loader(seed=2, n=2, seq=6, batch_size=2, vocab=60)
    got = edge_attribution_patching_prune_scores(pm, loader, progress=False)
    want = reference_eap_scores(pm, loader)
    scale = max(float(v.abs().max()) for v in want.values())
    assert scale > 1e-6
    for dest in want:
        torch.testing.assert_close(got[dest], want[dest], atol=1e-9 * scale, rtol=0)


def test_bad_arguments_name_the_argument_and_the_fix():
    with pytest.raises(ValueError, match=r"no random-weight shape 'gpt3'; available: gpt2, pythia"):
        shape_hf_config("gpt3")
    with pytest.raises(ValueError, match=r"n_layers must be an integer from 1 to 32 for llama3, got 33"):
        shape_hf_config("llama3", n_layers=33)
    with pytest.raises(ValueError, match=r"scale must be .* dividing pythia-1.4b's head size 128 "
                                         r"\(leaving a multiple of 4\).* got 64"):
        shape_hf_config("pythia-1.4b", scale=64)
    with pytest.raises(ValueError, match="dtype must be a floating torch.dtype, got torch.int64"):
        random_shape_hf_model("gpt2", n_layers=1, scale=16, dtype=torch.int64)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 70), cols=st.integers(1, 40), chunk=st.integers(1, 3000),
       seed=st.integers(0, 2**16))  # fmt: skip
def test_chunked_draw_is_one_float32_draw_rounded(rows, cols, chunk, seed):
    whole = torch.empty(rows, cols).normal_(0.0, 0.02, generator=torch.Generator().manual_seed(seed))
    got32 = torch.empty(rows, cols)
    draw_normal_(got32, 0.02, torch.Generator().manual_seed(seed), chunk=chunk)
    got16 = torch.empty(rows, cols, dtype=torch.bfloat16)
    draw_normal_(got16, 0.02, torch.Generator().manual_seed(seed), chunk=chunk)
    assert torch.equal(got32, whole) and torch.equal(got16, whole.to(torch.bfloat16))


def test_qwen_weights_are_one_draw_per_parameter_in_order():
    """The shared builder draws what the plain recipe draws: build in float32, one
    ``normal_`` per parameter (norm weights 1), in ``named_parameters`` order."""
    import transformers as tf

    hf = random_shape_hf_model("qwen2.5", n_layers=1, scale=8, seed=3, dtype=torch.float32)
    ref = tf.Qwen2ForCausalLM(shape_hf_config("qwen2.5", n_layers=1, scale=8))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for pname, p in ref.named_parameters():
            p.fill_(1.0) if pname.endswith("norm.weight") else p.normal_(0.0, 0.02, generator=gen)
    want = dict(ref.named_parameters())
    for pname, p in hf.named_parameters():
        assert torch.equal(p, want[pname]), pname


_PEAK = """
import resource, sys, torch
from edgewise.models import shapes
shapes.DRAW_CHUNK = 2**20
dtype = getattr(torch, sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
hf = shapes.random_shape_hf_model("qwen2.5", n_layers=1, scale=2, dtype=dtype)
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(grew, sum(p.numel() * p.element_size() for p in hf.parameters()))
"""


@pytest.mark.slow  # ~40 s on a busy machine; test_chunked_draw_... covers the bfloat16 draws
def test_bfloat16_build_never_holds_a_float32_copy():
    """One layer of Qwen2.5-0.5B at half width (37M parameters, 75 MB in bfloat16, 150 MB
    in float32): building in bfloat16 grows the process by its bfloat16 weights plus the
    4 MiB draw chunk and little else, never by the float32 size."""
    out = subprocess.run([sys.executable, "-c", _PEAK, "bfloat16"], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    grew, weights = map(int, out.split())
    # embedding 75968 x 448; Q, O 448 x 448; K, V 448 x 64; Q/K/V biases; MLP 3 x 448 x 2432; 3 norms
    n = 75968 * 448 + 2 * 448 * 448 + 2 * 448 * 64 + 448 + 2 * 64 + 3 * 448 * 2432 + 3 * 448
    assert n == 37_762_944 and weights == 2 * n
    assert grew < weights + 30 * 2**20 < 2 * weights


@pytest.mark.parametrize("name", SHAPES)
def test_a_bridge_holds_the_counted_weights_and_its_split_qkv_copy(name):
    """What ``edgewise mib memory`` counts as weights is what a bridge holds: the
    parameters, plus a split copy of the fused Q/K/V projection on GPT-2 and GPT-NeoX
    (Pythia); TransformerLens 3.9's bridge also gives the unembedding a bias."""
    from edgewise.mib.models import bridge_copy_bytes

    model = random_shape_model(name, "bridge", n_layers=2, scale=16, dtype=torch.float32)
    held = sum(p.numel() * p.element_size() for p in model.original_model.parameters())
    plain = random_shape_hf_model(name, n_layers=2, scale=16, dtype=torch.float32)  # no bridge
    counted = sum(p.numel() for p in plain.parameters())
    m = dataclasses.replace(SHAPES[name], n_layers=2, d_model=int(model.cfg.d_model),
                            dtype=torch.float32)  # fmt: skip
    copy = bridge_copy_bytes(m)
    assert (copy > 0) == (name in ("gpt2", "pythia-1.4b"))
    assert held - counted * 4 in (copy, copy + 4 * int(model.cfg.d_vocab)), (held, counted, copy)
