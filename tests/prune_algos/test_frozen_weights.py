"""Scores never depend on whether the model's weights require grad.

auto-circuit's loaders and notebooks freeze every weight (``requires_grad=False``). Every
gradient-based scorer must give the same scores on such a model as on the same model with
trainable weights, to float64 rounding: across model kinds, norms, grouped-query attention,
parallel blocks, token positions, ablation types and mask values.
"""

from __future__ import annotations

import pytest
import torch

from edgewise import (
    AblationType,
    atp_star_prune_scores,
    eap_ig_inputs_prune_scores,
    edge_attribution_patching_prune_scores,
    learned_mask_prune_scores,
    mask_gradient_prune_scores,
    patchable_model,
    subnetwork_probing_prune_scores,
)
from edgewise.models import hooked_transformer_available, random_bridge, random_model

from reference import reference_eap_scores
from util import VOCAB, random_loader

MODELS = {
    "default": lambda: random_model(n_layers=2, d_vocab=VOCAB, dtype=torch.float64, seed=1),
    "gqa-rms-rotary": lambda: random_model(
        n_layers=2, d_vocab=VOCAB, n_kv_heads=2, normalization_type="RMS",
        positional_embedding_type="rotary", dtype=torch.float64, seed=2),
    "parallel": lambda: random_model(n_layers=2, d_vocab=VOCAB, parallel_attn_mlp=True,
                                     dtype=torch.float64, seed=3),
    "bridge-gpt2": lambda: random_bridge("gpt2", d_vocab=VOCAB, dtype=torch.float64, seed=4),
}  # fmt: skip
if hooked_transformer_available():
    MODELS["hooked-LNPre"] = lambda: random_model(n_layers=2, d_vocab=VOCAB, normalization_type="LNPre",
                                                  dtype=torch.float64, seed=5, kind="hooked")

_CACHE: dict[tuple, tuple] = {}


def pair(kind: str, seq_len: int | None):
    """(trainable, frozen) patchable models over the same weights, built once."""
    key = (kind, seq_len)
    if key not in _CACHE:
        models = []
        for frozen in (False, True):
            model = MODELS[kind]()
            for p in model.parameters():
                p.requires_grad_(not frozen)
            models.append(patchable_model(model, seq_len=seq_len))
        _CACHE[key] = tuple(models)
    return _CACHE[key]


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    scale = max(float(v.abs().max()) for v in a.values())
    assert scale > 0
    for n in a:
        torch.testing.assert_close(b[n], a[n], atol=1e-12 * max(1.0, scale), rtol=1e-9, msg=n)


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("seq_len", [None, 5])
@pytest.mark.parametrize(
    "kwargs",
    [{"mask_val": 0.0}, {"mask_val": 0.5}, {"mask_val": 1.0}, {"integrated_grad_samples": 3},
     {"integrated_grad_samples": 2, "integrated_grad_mode": "layer"}],
    ids=["eap", "mask-0.5", "mask-1", "ig", "ig-layer"],
)
def test_mask_gradients_do_not_depend_on_frozen_weights(kind, seq_len, kwargs):
    trainable, frozen = pair(kind, seq_len)
    loader = random_loader(seed=3, seq_len_edges=seq_len is not None)
    got = [mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", progress=False, **kwargs)
           for pm in (trainable, frozen)]
    assert_same(*got)


@pytest.mark.parametrize("ablation", [AblationType.RESAMPLE, AblationType.ZERO,
                                      AblationType.TOKENWISE_MEAN_CLEAN_AND_CORRUPT,
                                      AblationType.BATCH_TOKENWISE_MEAN])
@pytest.mark.parametrize("mask_val", [0.0, 0.5])
def test_every_ablation_type(ablation, mask_val):
    trainable, frozen = pair("default", None)
    loader = random_loader(seed=4)
    got = [mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", mask_val=mask_val,
                                      ablation_type=ablation, progress=False)
           for pm in (trainable, frozen)]
    assert_same(*got)


@pytest.mark.parametrize("kind", ["default", "bridge-gpt2"])
def test_other_gradient_scorers(kind):
    trainable, frozen = pair(kind, None)
    loader = random_loader(seed=5)
    for fn in (
        lambda pm: edge_attribution_patching_prune_scores(pm, loader, progress=False),
        lambda pm: eap_ig_inputs_prune_scores(pm, loader, integrated_grad_samples=3, progress=False),
        lambda pm: atp_star_prune_scores(pm, loader, grad_drop=True, progress=False),
        lambda pm: learned_mask_prune_scores(pm, loader, epochs=3, progress=False),
        lambda pm: subnetwork_probing_prune_scores(pm, loader, epochs=2, seed=0, progress=False),
        lambda pm: subnetwork_probing_prune_scores(pm, loader, epochs=2, mask_fn="sigmoid",
                                                   tree_optimisation=True, progress=False),
    ):
        assert_same(fn(trainable), fn(frozen))
    # and EAP on frozen weights is the plain-hook reference's on trainable ones
    assert_same(edge_attribution_patching_prune_scores(frozen, loader, progress=False),
                reference_eap_scores(trainable, loader))


def test_weights_stay_as_the_user_left_them():
    trainable, frozen = pair("default", None)
    mask_gradient_prune_scores(frozen, random_loader(seed=6), None, "logit", "avg_diff",
                               mask_val=0.5, progress=False)
    assert not any(p.requires_grad for p in frozen.wrapped_model.parameters())
    assert all(p.grad is None for p in frozen.wrapped_model.parameters())
    assert all(p.requires_grad for p in trainable.wrapped_model.parameters())
    subnetwork_probing_prune_scores(trainable, random_loader(seed=6), epochs=1, progress=False)
    assert all(p.grad is None for p in trainable.wrapped_model.parameters())  # masks only
