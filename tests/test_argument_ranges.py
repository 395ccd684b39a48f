"""Arguments with a meaningful range, and official circuits, checked against them: a
``mask_val`` outside [0, 1], a dropout probability of 1, a learning rate of 0, and an
official edge that is not in the model's graph (its ``patch_idx`` would mark another
edge) are refused naming the parameter or the edge."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgewise import load_datasets_from_json, mask_gradient_prune_scores, patchable_model
from edgewise.checks import require_real
from edgewise.metrics.faithfulness import measure_roc
from edgewise.models import random_model
from edgewise.prune_algos import learned_mask_prune_scores, subnetwork_probing_prune_scores
from edgewise.prune_algos.baselines import ground_truth_prune_scores

VOCAB, N_CTX = 20, 8


@pytest.fixture(scope="module")
def model():
    return patchable_model(random_model(n_layers=1, n_heads=2, d_head=4, d_vocab=VOCAB, n_ctx=N_CTX))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    prompts = [{"clean": [3, 4, 5, 6], "corrupt": [3, 4, 5, 7 + i], "answers": [1],
                "wrong_answers": [2]} for i in range(4)]  # fmt: skip
    path = tmp_path_factory.mktemp("d") / "d.json"
    path.write_text(json.dumps({"prompts": prompts}))
    return load_datasets_from_json(None, path, train_test_size=(4, 0), batch_size=2, shuffle=False)[0]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False),
                       st.floats(min_value=1 + 1e-9, allow_nan=False, allow_infinity=False)))  # fmt: skip
def test_mask_val_outside_0_1_is_refused_naming_the_range(model, data, value):
    with pytest.raises(ValueError, match=r"mask_val must be in \[0, 1\] \(0: every edge clean, 1: "
                                         r"every edge ablated\), got "):
        mask_gradient_prune_scores(model, data, None, "logit", "avg_diff", mask_val=value, progress=False)


def test_mask_val_at_both_ends_is_accepted(model, data):
    for value in (0.0, 1, 0.5):
        scores = mask_gradient_prune_scores(model, data, None, "logit", "avg_diff", mask_val=value,
                                            progress=False)  # fmt: skip
        assert all(bool(torch.isfinite(s).all()) for s in scores.values())


@pytest.mark.parametrize(("fn", "kwargs", "match"), [
    (subnetwork_probing_prune_scores, {"dropout_p": 1.0}, r"dropout_p must be in \[0, 1\)"),
    (subnetwork_probing_prune_scores, {"dropout_p": -0.1}, r"dropout_p must be in \[0, 1\)"),
    (subnetwork_probing_prune_scores, {"learning_rate": 0.0}, r"learning_rate must be in \(0, inf\)"),
    (learned_mask_prune_scores, {"init_keep": 1.0}, r"init_keep must be in \(0, 1\) \(a keep probability\)"),
    (learned_mask_prune_scores, {"learning_rate": -1.0}, r"learning_rate must be in \(0, inf\)"),
    (learned_mask_prune_scores, {"regularize_lambda": -1.0}, r"regularize_lambda must be in \[0, inf\)"),
])  # fmt: skip
def test_rates_and_probabilities_outside_their_range(model, data, fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(model, data, None, epochs=1, progress=False, **kwargs)


@settings(max_examples=60, deadline=None)
@given(value=st.floats(allow_nan=False, allow_infinity=False, width=32),
       low=st.none() | st.floats(-10, 10), high=st.none() | st.floats(-10, 10),
       open_low=st.booleans(), open_high=st.booleans())  # fmt: skip
def test_require_real_accepts_exactly_the_interval(value, low, high, open_low, open_high):
    inside = ((low is None or (value > low if open_low else value >= low))
              and (high is None or (value < high if open_high else value <= high)))  # fmt: skip
    try:
        got = require_real(value, "x", low, high, open_low=open_low, open_high=open_high)
    except ValueError as err:
        assert not inside and str(err).startswith("x must be in ")
    else:
        assert inside and got == value


def test_an_official_edge_from_another_graph_is_refused_not_moved(model):
    """An edge of a 3-head model named like one of this 2-head model's edges, but at
    another ``patch_idx``: marking it would have marked a different edge."""
    other = patchable_model(random_model(n_layers=1, n_heads=3, d_head=4, d_vocab=VOCAB, n_ctx=N_CTX))
    by_name = {e.name: e for e in model.edges}
    foreign = next(e for e in other.edges if e.name in by_name and e.dest.module_name
                   == by_name[e.name].dest.module_name and e.patch_idx != by_name[e.name].patch_idx)
    with pytest.raises(ValueError) as err:
        ground_truth_prune_scores(model, None, {foreign, *model.edges[:2]})
    message = str(err.value)
    assert repr(foreign) in message and "1 official edge(s) are not in the model's graph" in message
    assert f"({model.n_edges} edges, seq_len=None)" in message and "official_edges(model)" in message
    scores = model.new_prune_scores(1.0)
    with pytest.raises(ValueError, match=r"measure_roc: 1 official edge\(s\) are not in the model's graph"):
        measure_roc(model, {foreign, model.edges[0]}, scores)


def test_official_edges_of_this_graph_mark_exactly_those_edges(model):
    chosen = set(model.edges[::7])
    scores = ground_truth_prune_scores(model, None, chosen)
    marked = {e for e in model.edges if float(scores[e.dest.module_name][e.patch_idx]) == 1.0}
    assert marked == chosen
    assert sum(int(s.sum()) for s in scores.values()) == len(chosen)
