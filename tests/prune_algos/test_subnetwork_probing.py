"""auto-circuit's subnetwork probing and circuit probing (edgewise.prune_algos.subnetwork_probing):
per-prompt masks patch each prompt as if alone, one training step is exactly one Adam step on
the gradient of an independent hook-based patcher, hard-concrete noise is seeded and has the
right law, and circuit probing nests its circuits. (Numbers equal to auto-circuit's: parity/.)"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from edgewise import (
    AblationType,
    circuit_probing_prune_scores,
    patchable_model,
    src_ablations,
    subnetwork_probing_prune_scores,
)
from edgewise.models import random_model
from edgewise.prune_algos.subnetwork_probing import regularize_const, sample_hard_concrete

from reference import reference_patched_logits
from util import VOCAB, planted_model, random_loader


@pytest.fixture(scope="module")
def pm():
    return patchable_model(random_model(n_layers=2, n_heads=2, d_head=4, d_vocab=VOCAB,
                                        dtype=torch.float64, seed=3))  # fmt: skip


def test_per_prompt_masks_patch_each_prompt_as_if_alone(pm):
    batch = next(iter(random_loader(seed=1, n=3, batch_size=3)))
    tokens, n = batch.clean, batch.clean.shape[0]
    patches = pm.src_outs(batch.corrupt)  # one patch per prompt
    g = torch.Generator().manual_seed(0)
    masks = {name: torch.rand((n, *m.mask_shape), generator=g, dtype=torch.float64).requires_grad_()
             for name, m in pm.dest_modules.items()}  # fmt: skip
    with pm.patch(masks, patches):
        out = pm(tokens)
    grads = torch.autograd.grad(out[:, -1].pow(2).sum(), list(masks.values()))
    for i in range(n):
        alone = {name: m[i].detach().requires_grad_() for name, m in masks.items()}
        ref = reference_patched_logits(pm, tokens[i : i + 1], alone, patches[:, i : i + 1])
        torch.testing.assert_close(out[i : i + 1], ref, rtol=1e-10, atol=1e-10)
        ref_grads = torch.autograd.grad(ref[:, -1].pow(2).sum(), list(alone.values()))
        for got, want in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(got[i], want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("mask_fn", [None, "sigmoid"])
@pytest.mark.parametrize("tree", [False, True])
def test_one_epoch_is_one_adam_step_on_the_reference_loss(pm, mask_fn, tree):
    """One batch, one epoch: theta moves by -lr * g / (|g| + eps) (Adam's first step), where g
    is the gradient of KL + lambda * penalty through the independent patcher. Edge mode runs
    the corrupt prompts and patches clean values; tree mode runs the clean prompts and
    patches the corrupt token-wise mean."""
    loader = random_loader(seed=2, n=4, batch_size=4)
    batch = next(iter(loader))
    lr, lam, init, size = 0.01, 3.0, 0.7, 5
    avoid = {pm.edges[0], pm.edges[7]}
    scores = subnetwork_probing_prune_scores(
        pm, loader, None, learning_rate=lr, epochs=1, regularize_lambda=lam, mask_fn=mask_fn,
        init_val=init, tree_optimisation=tree, circuit_size=size, avoid_edges=avoid,
        avoid_lambda=0.5, progress=False,
    )
    # the same loss, written out against the reference patcher
    theta = {n: torch.full(m.mask_shape, init if tree else -init, dtype=torch.float64, requires_grad=True)
             for n, m in pm.dest_modules.items()}  # fmt: skip
    masks = {n: torch.sigmoid(t) if mask_fn else t for n, t in theta.items()}
    if tree:
        patches = src_ablations(pm, loader, AblationType.TOKENWISE_MEAN_CORRUPT)
    else:
        patches = pm.src_outs(batch.clean)
    out = reference_patched_logits(pm, batch.clean if tree else batch.corrupt, masks, patches)[:, -1]
    with torch.no_grad():
        full = pm(batch.clean)[:, -1]
    kl = F.kl_div(F.log_softmax(out, -1), F.log_softmax(full, -1), reduction="sum", log_target=True) / 4
    kept = sum(m.sum() for m in masks.values())
    n_mask = pm.n_edges - kept if tree else kept
    penalty = F.relu(n_mask - size) / size
    for e in avoid:
        logit = theta[e.dest.module_name][e.patch_idx]
        penalty = penalty + (-1 if tree else 1) * 0.5 / 2 * (torch.sigmoid(logit) if mask_fn else logit)
    grads = torch.autograd.grad(kl + lam * penalty, list(theta.values()))
    stepped = {n: t.detach() - lr * g / (g.abs() + 1e-8) for (n, t), g in zip(theta.items(), grads, strict=True)}
    extreme = (max if tree else min)(float(t.max() if tree else t.min()) for t in stepped.values())
    for n, t in stepped.items():
        want = abs(extreme) + (-t if tree else t)
        torch.testing.assert_close(scores[n], want, rtol=1e-12, atol=1e-12)


def test_hard_concrete_noise_is_seeded():
    pm = patchable_model(planted_model())
    loader = random_loader(seed=5)
    run = lambda **kw: subnetwork_probing_prune_scores(pm, loader, None, epochs=3, progress=False, **kw)  # noqa: E731
    a, b, c = run(seed=1), run(seed=1), run(seed=2)
    torch.manual_seed(7)
    d = run()
    torch.manual_seed(7)
    e = run()
    for n in a:
        assert torch.equal(a[n], b[n]) and torch.equal(d[n], e[n])
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_hard_concrete_samples_have_the_l0_law():
    """P(mask > 0) = sigmoid(theta - temp * log(-left / right)), the probability the
    penalty of Louizos et al. counts, and samples lie in [0, 1]."""
    theta = torch.tensor([-2.0, 0.0, 1.5], dtype=torch.float64)
    samples = sample_hard_concrete(theta.expand(200_000, 3), torch.Generator().manual_seed(0))
    assert samples.min() >= 0 and samples.max() <= 1
    freq = (samples > 0).double().mean(0)
    torch.testing.assert_close(freq, torch.sigmoid(theta - regularize_const), atol=4e-3, rtol=0)


def test_subnetwork_probing_finds_the_planted_path():
    pm = patchable_model(planted_model())
    scores = subnetwork_probing_prune_scores(pm, random_loader(seed=13), None, epochs=40,
                                             regularize_lambda=1.0, seed=0, progress=False)  # fmt: skip
    top = sorted(pm.edges, key=lambda e: -float(scores[e.dest.module_name][e.patch_idx]))[:2]
    assert {e.name for e in top} == {"Resid Start->A0.0.V", "A0.0->Resid End"}
    assert min(float(s.min()) for s in scores.values()) == 0.0  # shifted: lowest score 0


def test_circuit_probing_nests_circuits_by_size():
    pm = patchable_model(planted_model())
    planted = {e for e in pm.edges if e.name in ("Resid Start->A0.0.V", "A0.0->Resid End")}
    scores = circuit_probing_prune_scores(pm, random_loader(seed=13), planted, epochs=40,
                                          regularize_lambda=1.0, circuit_sizes=[6, "true_size"],
                                          seed=0, progress=False)  # fmt: skip
    by_edge = {e: float(scores[e.dest.module_name][e.patch_idx]) for e in pm.edges}
    assert {e for e, s in by_edge.items() if s == 2.0} == planted  # the smallest circuit first
    assert sum(s == 1.0 for s in by_edge.values()) >= 6 - 2  # the next size adds edges
    assert set(by_edge.values()) <= {0.0, 1.0, 2.0}


def test_subnetwork_probing_refuses_bad_arguments():
    pm = patchable_model(planted_model())
    loader = random_loader()
    with pytest.raises(ValueError, match="mask_fn"):
        subnetwork_probing_prune_scores(pm, loader, None, mask_fn="relu", progress=False)
    with pytest.raises(ValueError, match="faithfulness_target"):
        subnetwork_probing_prune_scores(pm, loader, None, faithfulness_target="auc", progress=False)
    with pytest.raises(ValueError, match="official_edges is None"):
        circuit_probing_prune_scores(pm, loader, None, progress=False)
    with pytest.raises(ValueError, match="distinct"):
        circuit_probing_prune_scores(pm, loader, None, circuit_sizes=[3, 3], progress=False)


def test_init_mask_val_is_a_keep_probability_of_point_nine():
    from edgewise.prune_algos.subnetwork_probing import init_mask_val

    p = 1 / (1 + math.exp(-init_mask_val))
    assert p * 1.2 - 0.1 == pytest.approx(0.9)
