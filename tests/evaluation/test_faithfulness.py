"""ROC against a known circuit, faithfulness curves, CPR and CMD."""

from __future__ import annotations

import pytest
import torch

from edgewise import GraphSpec, build_graph, patchable_model
from edgewise.metrics.faithfulness import area_under_curve, cpr_cmd, faithfulness_curve, measure_roc
from edgewise.models import random_model


@pytest.fixture(scope="module")
def pm():
    return patchable_model(random_model(n_layers=2, d_vocab=20))


def scores_from(pm, values):
    scores = {n: torch.zeros(m.mask_shape) for n, m in pm.dest_modules.items()}
    for e, v in zip(pm.edges, values):
        scores[e.dest.module_name][e.patch_idx] = v
    return scores


def test_ground_truth_scores_give_auc_one_and_inverted_give_zero(pm):
    official = set(pm.edges[::7])
    truth = [1.0 if e in official else 0.0 for e in pm.edges]
    assert measure_roc(pm, official, scores_from(pm, truth)).auc == pytest.approx(1.0)
    inverted = [0.0 if e in official else 1.0 for e in pm.edges]
    assert measure_roc(pm, official, scores_from(pm, inverted)).auc == pytest.approx(0.0)
    assert measure_roc(pm, official, scores_from(pm, [-v for v in truth])).auc == pytest.approx(1.0)


def test_random_scores_average_half(pm):
    official = set(pm.edges[::5])
    aucs = []
    for seed in range(40):
        gen = torch.Generator().manual_seed(seed)
        aucs.append(measure_roc(pm, official, scores_from(pm, torch.randn(pm.n_edges, generator=gen).tolist())).auc)
    assert abs(sum(aucs) / len(aucs) - 0.5) < 0.05


def test_ties_form_groups_and_match_the_rank_auc(pm):
    gen = torch.Generator().manual_seed(0)
    values = torch.randint(0, 4, (pm.n_edges,), generator=gen).double()
    official = {e for e, v in zip(pm.edges, values) if torch.rand(1, generator=gen) < 0.2 + 0.2 * v}
    roc = measure_roc(pm, official, scores_from(pm, values.tolist()))
    assert len(roc.fpr) == len(torch.unique(values)) + 1
    assert (roc.fpr[0], roc.tpr[0], roc.fpr[-1], roc.tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    pos = [v for e, v in zip(pm.edges, values) if e in official]
    neg = [v for e, v in zip(pm.edges, values) if e not in official]
    rank = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    assert roc.auc == pytest.approx(float(rank))


def test_faithfulness_cpr_cmd_by_hand():
    meas = [(0, 1.0), (10, 2.0), (50, 3.0), (100, 3.0)]
    curve = faithfulness_curve(meas)
    assert curve == [(0, 0.0), (10, 0.5), (50, 1.0), (100, 1.0)]
    cpr, cmd = cpr_cmd(meas)
    assert cpr == pytest.approx(0.1 * 0.25 + 0.4 * 0.75 + 0.5 * 1.0)
    assert cmd == pytest.approx(0.1 * 0.75 + 0.4 * 0.25)
    assert area_under_curve([0, 1, 2], [1, 1, 1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="undefined"):
        faithfulness_curve([(0, 1.0), (5, 1.0)])


def test_unknown_official_edges_are_rejected(pm):
    other = build_graph(GraphSpec(n_layers=3, n_heads=4, n_kv_heads=4))
    with pytest.raises(ValueError, match="not in the model's graph"):
        measure_roc(pm, {other.edges[-1]}, scores_from(pm, [0.0] * pm.n_edges))
