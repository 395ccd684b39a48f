"""evaluate_scores: the circuit sizes it measures."""

from __future__ import annotations

import pytest
import torch

import edgewise as ew
from edgewise.benchmarks.tasks import get_task
from edgewise.evaluation.pipeline import evaluate_scores
from edgewise.models import random_model


@pytest.fixture(scope="module")
def setup():
    model = random_model(n_layers=1, n_heads=2, d_head=4, d_vocab=50, seed=0)
    pm = ew.patchable_model(model, factorized=True, slice_output="last_seq", separate_qkv=True)
    _, test = ew.load_datasets_from_json(pm, "toy_copy", batch_size=4, train_test_size=(4, 4),
                                         shuffle=False)  # fmt: skip
    return pm, test


@pytest.mark.parametrize("n_kept", [0, 3])
def test_scores_of_two_values_still_get_the_empty_and_full_circuits(setup, n_kept):
    """A circuit of one size cannot be compared with anything: the empty circuit and the
    full model are always measured, so faithfulness is defined."""
    pm, test = setup
    scores = pm.new_prune_scores()
    kept = 0
    for t in scores.values():  # the first n_kept edges, in the graph's order, score 1
        take = min(n_kept - kept, t.numel())
        t.view(-1)[:take] = 1.0
        kept += take
    r = evaluate_scores(pm, get_task("toy_copy"), test, scores, "two-values", quiet=True)
    sizes = [s for s, _ in r["measurements"]]
    assert sizes == sorted({0, n_kept, pm.n_edges})
    assert [s for s, _ in r["faithfulness"]] == sizes
    assert r["faithfulness"][0][1] == 0.0 and r["faithfulness"][-1][1] == 1.0


def test_max_sizes_bounds_the_sizes_and_keeps_both_ends(setup):
    pm, test = setup
    scores = pm.new_prune_scores()
    start = 1.0
    for t in scores.values():  # distinct scores: every size is a group
        t.view(-1)[:] = torch.arange(t.numel(), dtype=t.dtype) + start
        start += t.numel()
    r = evaluate_scores(pm, get_task("toy_copy"), test, scores, "all", quiet=True, max_sizes=5)
    sizes = [s for s, _ in r["measurements"]]
    assert sizes[0] == 0 and sizes[-1] == pm.n_edges and len(sizes) <= 5 + 2
    assert sizes == sorted(set(sizes))
