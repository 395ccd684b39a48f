"""The model kinds: every shipped model loads as a TransformerBridge (TransformerLens 3.9
and 4.x) and as a HookedTransformer (3.9), and both compute the same outputs."""

from __future__ import annotations

import pytest
import torch

from edgewise import patchable_model
from edgewise.benchmarks import toy_models
from edgewise.models import from_tl_weights, hooked_transformer_available, resolve_kind
from edgewise.models.convert import hf_gpt2_from_tl

from util import planted_model, requires_hooked


def test_default_kind_follows_the_installed_transformer_lens():
    want = "hooked" if hooked_transformer_available() else "bridge"
    assert resolve_kind(None) == want
    if not hooked_transformer_available():
        with pytest.raises(ImportError, match="removed in TransformerLens 4.0.*kind='bridge'"):
            resolve_kind("hooked")
    with pytest.raises(ValueError, match="'hooked' or 'bridge'"):
        resolve_kind("native")  # type: ignore[arg-type]


def test_shipped_toy_ioi_bridge_is_a_plain_gpt2_that_solves_the_task():
    """On any TransformerLens: the shipped checkpoint boots as a bridge and still gets
    every held-out prompt right with a large logit difference (docs/toy_ioi.md)."""
    model = toy_models.load("toy-ioi", kind="bridge")
    assert type(model).__name__ == "TransformerBridge"
    export = hf_gpt2_from_tl(toy_models.load_config(), toy_models.load_weights())
    assert export.plain  # the unembedding bias folds into ln_f: no module swapped
    _, test = toy_models.toy_ioi_dataloaders(model, batch_size=64, train_test_size=(64, 64))
    with torch.no_grad():
        for b in test:
            logits = model(b.clean)[:, -1]
            diff = logits.gather(1, b.answers) - logits.gather(1, b.wrong_answers)
            assert bool((diff > 5).all())


@requires_hooked
def test_toy_ioi_kinds_agree():
    hooked, bridge = toy_models.load(kind="hooked"), toy_models.load(kind="bridge")
    tokens = torch.randint(0, hooked.cfg.d_vocab, (4, 15), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(bridge(tokens), hooked(tokens), atol=2e-5, rtol=0)
    assert patchable_model(hooked).edges == patchable_model(bridge).edges


@requires_hooked
@pytest.mark.parametrize("task", ["reverse", "xproportion"])
def test_tracr_kinds_agree(task):
    pytest.importorskip("tracr")
    from edgewise.benchmarks.tracr_models import compile_tracr

    hooked, info = compile_tracr(task, kind="hooked")
    bridge, _ = compile_tracr(task, kind="bridge")
    n = len(info.vocab)
    tokens = torch.stack([info.encode([info.vocab[(i * k) % n] for i in range(5)]) for k in (1, 2, 3)])
    with torch.no_grad():
        torch.testing.assert_close(bridge(tokens), hooked(tokens), atol=1e-5, rtol=0)
    assert patchable_model(hooked).edges == patchable_model(bridge).edges


@requires_hooked
def test_planted_model_kinds_agree():
    hooked, bridge = planted_model(kind="hooked"), planted_model(kind="bridge")
    tokens = torch.randint(3, 20, (3, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(bridge(tokens), hooked(tokens), atol=1e-12, rtol=0)


@requires_hooked
@pytest.mark.parametrize(
    "fields",
    [
        {"normalization_type": "LN", "act_fn": "gelu_new"},
        {"normalization_type": None, "act_fn": "relu", "d_head": 3},  # padded heads and residual
        {"normalization_type": None, "attn_only": True, "attention_dir": "bidirectional"},
        {"normalization_type": "LN", "act_fn": "gelu", "d_vocab_out": 7},  # own lm_head
    ],
)
def test_converted_gpt2_computes_the_hooked_transformer(fields):
    """A random HookedTransformer and its GPT-2 bridge agree (float64), whatever GPT-2
    itself cannot say: no norms, padded heads, bidirectional attention, no MLPs, an
    output vocabulary of another size, a nonzero unembedding bias."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = {"n_layers": 2, "d_model": 8, "n_heads": 2, "d_head": 4, "d_mlp": 16, "d_vocab": 11,
           "n_ctx": 6, "act_fn": "relu", **fields}
    torch.manual_seed(0)
    hooked = HookedTransformer(HookedTransformerConfig(**cfg, dtype=torch.float64, seed=3)).eval()
    with torch.no_grad():
        for p in hooked.parameters():  # biases too, so every term is exercised
            p.add_(0.3 * torch.randn_like(p))
    bridge = from_tl_weights({**cfg, "dtype": torch.float64}, hooked.state_dict(), kind="bridge")
    tokens = torch.randint(0, 11, (3, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(bridge(tokens), hooked(tokens), atol=1e-10, rtol=0)
    assert patchable_model(bridge).n_edges == patchable_model(hooked).n_edges


@requires_hooked
def test_toy_ioi_scores_agree_across_kinds():
    """EAP and IG on the shipped model give the same scores whichever kind runs them (the
    two differ by float32 rounding only)."""
    from edgewise import flat_prune_scores, mask_gradient_prune_scores

    got = []
    for kind in ("hooked", "bridge"):
        model = toy_models.load(kind=kind)
        pm = patchable_model(model)
        train, _ = toy_models.toy_ioi_dataloaders(model, batch_size=16, train_test_size=(16, 16))
        got.append([flat_prune_scores(mask_gradient_prune_scores(
            pm, train, None, "logit", "avg_diff", progress=False, **kw), pm)
            for kw in ({"mask_val": 0.0}, {"integrated_grad_samples": 3})])
    for hooked, bridge in zip(*got):
        torch.testing.assert_close(bridge, hooked, atol=2e-4 * float(hooked.abs().max()), rtol=0)
