"""ACDC on a busy machine: the fast search measures one pass on torch's current number of
CPU threads and on 1, runs on the faster, and leaves the caller's number as it was; the
scores do not depend on the choice."""

from __future__ import annotations

import pytest
import torch
from test_acdc import assert_same_scores, n_distinct, taus_for

from edgewise import patchable_model
from edgewise.models import random_model
from edgewise.prune_algos.acdc import acdc_prune_scores, acdc_visit_order, search

from util import VOCAB, random_loader


def _model_and_data():
    pm = patchable_model(random_model(n_layers=2, n_heads=2, d_vocab=VOCAB, dtype=torch.float64,
                                      seed=2), seq_len=4)  # fmt: skip
    loader = random_loader(seed=8, seq=4, seq_len_edges=True)
    return pm, loader


@pytest.fixture(scope="module")
def plain_search():
    """The model, data, taus and the plain search's scores (computed once, on the
    suite's thread count)."""
    pm, loader = _model_and_data()
    exps, bases, _ = taus_for(pm, loader, "kl_div")
    plain = acdc_prune_scores(pm, loader, None, exps, bases, progress=False, method="plain")
    assert n_distinct(plain) >= 3
    return pm, loader, exps, bases, plain


@pytest.mark.parametrize(("busy", "want_threads"), [(True, 1), (False, 2)])
def test_the_search_runs_on_the_thread_count_that_measures_faster(
    monkeypatch, plain_search, busy, want_threads
):
    """A fake clock makes a pass cost ``threads`` seconds (busy: every extra thread waits
    to be scheduled) or ``1 / threads`` (idle). Every pass of the search after the choice
    runs on the faster count, the caller's 2 threads are back afterwards, and the scores
    are those of the plain search."""
    pm, loader, exps, bases, plain = plain_search
    torch.set_num_threads(2)
    clock, used = [0.0], []
    monkeypatch.setattr(search.time, "perf_counter", lambda: clock[0])
    outputs = search._FastEvaluator.outputs

    def timed(self, masks, module, cand):
        n = torch.get_num_threads()
        used.append(n)
        clock[0] += n if busy else 1 / n
        return outputs(self, masks, module, cand)

    monkeypatch.setattr(search._FastEvaluator, "outputs", timed)
    got = acdc_prune_scores(pm, loader, None, exps, bases, progress=False)
    assert_same_scores(got, plain)
    assert used[:6] == [2, 1, 2, 1, 2, 1]  # the choice: alternately, 3 passes each
    assert len(used) > 6 and set(used[6:]) == {want_threads}
    assert torch.get_num_threads() == 2


def test_on_one_thread_nothing_is_measured():
    """On 1 thread there is nothing to choose: no timing pass, and 1 stays."""
    torch.set_num_threads(1)
    try:
        pm, loader = _model_and_data()
        order = acdc_visit_order(pm)

        class Evaluator:
            def outputs(self, *a):
                raise AssertionError("no pass should run")

        chosen = search._choose_threads(Evaluator(), pm, order, torch.float64, torch.device("cpu"))
        assert chosen == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(2)
