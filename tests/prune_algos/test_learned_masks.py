"""Learned edge masks (subnetwork probing, circuit probing) recover a planted path and a
compiled circuit, deterministically for a seed."""

from __future__ import annotations

import pytest
import torch

from edgewise import (
    learned_mask_prune_scores,
    learned_mask_sizes_prune_scores,
    measure_roc,
    patchable_model,
)
from edgewise.prune_algos.learned_masks import keep_values

from util import planted_model, random_loader

PLANTED = {"Resid Start->A0.0.V", "A0.0->Resid End"}


def _ranked(pm, scores):
    return sorted(pm.edges, key=lambda e: -float(scores[e.dest.module_name][e.patch_idx]))


@pytest.mark.parametrize("mask_fn", ["hard_concrete", "sigmoid"])
@pytest.mark.parametrize("tree", [False, True])
def test_learned_masks_recover_the_planted_path(mask_fn, tree):
    pm = patchable_model(planted_model())
    loader = random_loader(seed=13)
    scores = learned_mask_prune_scores(pm, loader, None, mask_fn, learning_rate=0.1, epochs=60,
                                       regularize_lambda=2.0, tree=tree, progress=False)
    assert {e.name for e in _ranked(pm, scores)[:2]} == PLANTED
    again = learned_mask_prune_scores(pm, loader, None, mask_fn, learning_rate=0.1, epochs=60,
                                      regularize_lambda=2.0, tree=tree, progress=False)
    for n in scores:  # same seed, same scores
        torch.testing.assert_close(scores[n], again[n], atol=0, rtol=0)


def test_circuit_probing_ranks_the_planted_path_first():
    pm = patchable_model(planted_model())
    scores = learned_mask_sizes_prune_scores(pm, random_loader(seed=13), None, sizes=[2, 5],
                                          progress=False, epochs=60, regularize_lambda=2.0)
    assert {e.name for e in _ranked(pm, scores)[:2]} == PLANTED
    assert measure_roc(pm, {e for e in pm.edges if e.name in PLANTED}, scores).auc == 1.0


def test_hard_concrete_keep_values_are_in_unit_interval_and_reach_both_ends():
    theta = torch.linspace(-6, 6, 1001)
    k = keep_values(theta, "hard_concrete", torch.Generator().manual_seed(0))
    assert float(k.min()) == 0.0 and float(k.max()) == 1.0
    with pytest.raises(ValueError, match="mask_fn"):
        keep_values(theta, "relu", None)  # type: ignore[arg-type]


@pytest.mark.parametrize("tree", [False, True])
def test_learned_masks_find_the_compiled_tracr_reverse_circuit(tree):
    pytest.importorskip("tracr", reason="tracr tests need the extra: pip install edgewise[tracr]")
    from edgewise.cli import _setup

    task, pm, train, _ = _setup(None, "tracr_reverse", 32)
    scores = learned_mask_prune_scores(pm, train, tree=tree, epochs=50, progress=False)
    assert measure_roc(pm, task.official_edges(pm), scores).auc > 0.95
