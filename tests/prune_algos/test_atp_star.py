"""AtP* for edges: the QK fix is exact where only the pattern is nonlinear and tracks
exact patching better than EAP on random models; GradDrop equals its definition."""

from __future__ import annotations

import statistics

import pytest
import torch

from edgewise import (
    atp_star_prune_scores,
    exact_patching_prune_scores,
    mask_gradient_prune_scores,
    patchable_model,
)
from edgewise.models import random_model

from util import VOCAB, random_loader


def _sharp(n_layers, seed, **kw):
    """A random model with sharper attention (W_Q, W_K x 4), where EAP's linearisation
    through the softmax is poor."""
    model = random_model(n_layers=n_layers, n_heads=4, d_head=8, d_vocab=VOCAB,
                                      dtype=torch.float64, seed=seed, **kw)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_Q.mul_(4)
            block.attn.W_K.mul_(4)
    return model


def _values(pm, scores, edges):
    return torch.tensor([float(scores[e.dest.module_name][e.patch_idx]) for e in edges])


def test_qk_fix_is_exact_when_only_the_softmax_is_nonlinear():
    """One attention-only layer, no norm, logit difference: after the pattern everything
    is linear, so the QK fix equals exact patching on Q/K edges; other edges keep EAP."""
    pm = patchable_model(_sharp(1, 0, attn_only=True, normalization_type=None))
    loader = random_loader(seed=0, n=8, seq=6, batch_size=4)
    exact = exact_patching_prune_scores(pm, loader, edges_per_pass=16, progress=False)
    eap = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", mask_val=0.0,
                                     progress=False)
    atp = atp_star_prune_scores(pm, loader, progress=False, edges_per_pass=5)
    qk = [e for e in pm.edges if e.dest.qkv in ("q", "k")]
    rest = [e for e in pm.edges if e.dest.qkv not in ("q", "k")]
    scale = float(_values(pm, exact, qk).abs().max())
    torch.testing.assert_close(_values(pm, atp, qk), _values(pm, exact, qk), atol=1e-9 * scale,
                               rtol=0)
    assert (_values(pm, eap, qk) - _values(pm, exact, qk)).abs().max() > 1e-3 * scale
    torch.testing.assert_close(_values(pm, atp, rest), _values(pm, eap, rest))


def test_qk_fix_tracks_exact_patching_better_than_eap_on_random_models():
    corr_eap, corr_qk = [], []
    for seed in range(6):
        pm = patchable_model(_sharp(2, seed))
        loader = random_loader(seed=seed, n=8, seq=6, batch_size=4)
        exact = exact_patching_prune_scores(pm, loader, edges_per_pass=16, progress=False)
        eap = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", mask_val=0.0,
                                         progress=False)
        atp = atp_star_prune_scores(pm, loader, progress=False, edges_per_pass=16)
        qk = [e for e in pm.edges if e.dest.qkv in ("q", "k")]
        want = _values(pm, exact, qk)
        corr_eap.append(float(torch.corrcoef(torch.stack([want, _values(pm, eap, qk)]))[0, 1]))
        corr_qk.append(float(torch.corrcoef(torch.stack([want, _values(pm, atp, qk)]))[0, 1]))
    # mean Pearson correlation with exact patching on Q/K edges (0.1.0-dev.2: 0.25 vs 0.59
    # over 10 seeds)
    assert statistics.mean(corr_qk) > statistics.mean(corr_eap) + 0.15


def test_grad_drop_is_the_mean_absolute_score_over_dropped_layers():
    model = _sharp(3, 1)
    pm = patchable_model(model)
    loader = random_loader(seed=2, n=4, seq=5, batch_size=4)  # one batch: |.| per batch
    got = atp_star_prune_scores(pm, loader, qk_fix=False, grad_drop=True, progress=False)
    want = {n: torch.zeros_like(t) for n, t in got.items()}
    for layer in range(3):  # independent: EAP with the layer's outputs detached
        handles = [pm.adapter.hook_point(f"blocks.{layer}.{leaf}").register_forward_hook(
            lambda _m, _i, out: out.detach()) for leaf in ("hook_attn_out", "hook_mlp_out")]
        try:
            eap = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", mask_val=0.0,
                                             progress=False)
        finally:
            for h in handles:
                h.remove()
        for n in want:
            want[n] += eap[n].abs() / 2
    for n in got:
        torch.testing.assert_close(got[n], want[n], atol=1e-10, rtol=1e-8)
    with pytest.raises(ValueError, match="separate query and key"):
        atp_star_prune_scores(patchable_model(model, separate_qkv=False), loader, progress=False)


@pytest.mark.parametrize("grad_drop", [False, True])
def test_the_progress_bar_counts_every_pass_including_the_qk_fix(monkeypatch, grad_drop):
    """The bar reaches its total only when the work is done: the Q/K fix's passes are on
    it (no silent wait after 100%), ``ceil(q/k edges of a layer / edges_per_pass)`` per
    layer and batch, besides one gradient pass per dropped layer (or one) per batch."""
    import edgewise.prune_algos.atp_star as atp

    bars = []

    class Bar:
        def __init__(self, total, desc, **kw):
            self.total, self.desc, self.n = total, desc, 0
            bars.append(self)

        def update(self, n=1):
            self.n += n

        def close(self):
            self.closed_at = self.n

    monkeypatch.setattr(atp, "tqdm", Bar)
    pm = patchable_model(_sharp(2, 0), separate_qkv=True)
    loader = random_loader(seed=1, n=4, seq=5, batch_size=2)  # 2 batches
    atp_star_prune_scores(pm, loader, grad_drop=grad_drop, edges_per_pass=3)
    per_layer: dict[int, int] = {}
    for e in pm.edges:
        if e.dest.qkv in ("q", "k"):
            layer = pm.dest_modules[e.dest.module_name].block
            per_layer[layer] = per_layer.get(layer, 0) + 1
    qk_passes = sum(-(-n // 3) for n in per_layer.values())
    (bar,) = bars
    assert bar.total == bar.closed_at == 2 * ((2 if grad_drop else 1) + qk_passes)
    assert bar.desc == "AtP* gradients + Q/K patterns"
