"""MIB's CPR/CMD: sizes, top-n, pruning, areas worked out by hand, and the toy IOI model
end to end (the command line prints what mib_evaluate returns)."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from edgewise import patchable_model
from edgewise.mib.evaluate import (
    MIB_PERCENTAGES,
    format_result,
    load_mib_setup,
    mib_area,
    mib_circuit_sizes,
    mib_evaluate,
    mib_evaluate_circuits,
    mib_flat_order,
    mib_prune,
    mib_topn,
)
from edgewise.models import random_model


@pytest.fixture(scope="module")
def pm():
    return patchable_model(random_model(n_layers=2, n_heads=4, d_vocab=20))


def named(pm, scores_by_mib_name, default=0.0):
    from edgewise.io.files import mib_edge_name

    scores = {n: torch.full(m.mask_shape, default) for n, m in pm.dest_modules.items()}
    for e in pm.edges:
        if mib_edge_name(e) in scores_by_mib_name:
            scores[e.dest.module_name][e.patch_idx] = scores_by_mib_name[mib_edge_name(e)]
    return scores


def edges(pm, *names):
    from edgewise.io.files import mib_edge_name

    by = {mib_edge_name(e): e for e in pm.edges}
    return {by[n] for n in names}


def test_sizes_are_truncated_products_of_the_whole_graph():
    # GPT-2 small: 0.001 * 32491 = 32.491 -> 32, ..., 0.5 * 32491 = 16245.5 -> 16245
    assert mib_circuit_sizes(32491) == [32, 64, 162, 324, 649, 1624, 3249, 6498, 16245, 32491]
    assert mib_circuit_sizes(110) == [0, 0, 0, 1, 2, 5, 11, 22, 55, 110]
    assert MIB_PERCENTAGES[0] == 0.001 and MIB_PERCENTAGES[-1] == 1.0 and len(MIB_PERCENTAGES) == 10
    with pytest.raises(ValueError, match="positive int"):
        mib_circuit_sizes(0)


def test_area_by_hand():
    # all 1: CPR is the total width 1 - 0.001, CMD 0
    assert mib_area([1.0] * 10) == pytest.approx((0.999, 0.0))
    # 0 up to 20%, 1 from 50%: CPR = 0.3 * 1/2 + 0.5 * 1 = 0.65;
    # CMD = (0.2 - 0.001) * 1 + 0.3 * 1/2 = 0.349
    cpr, cmd = mib_area([0.0] * 8 + [1.0, 1.0])
    assert cpr == pytest.approx(0.65) and cmd == pytest.approx(0.349)
    with pytest.raises(ValueError, match="10 faithfulnesses"):
        mib_area([1.0] * 9)


def test_flat_order_is_mibs_matrix_position(pm):
    # forward index 0 = input, 1..4 = a0.h*, 5 = m0; backward: a0 q(0-3) k(4-7) v(8-11), m0 12, ...
    n_bwd = 2 * (3 * 4 + 1) + 1
    order = dict(zip(pm.edges, mib_flat_order(pm).tolist()))
    (e,) = edges(pm, "a0.h1->m0")
    assert order[e] == 2 * n_bwd + 12
    (e,) = edges(pm, "input->a1.h2<k>")
    assert order[e] == 0 * n_bwd + 13 + 4 + 2
    (e,) = edges(pm, "m1->logits")
    assert order[e] == 10 * n_bwd + n_bwd - 1


def test_topn_signed_and_absolute_with_ties(pm):
    scores = named(
        pm, {"input->logits": 3.0, "m1->logits": -5.0, "a0.h0->m0": 1.0, "a0.h1->m0": 1.0}
    )
    assert mib_topn(pm, scores, 1, absolute=False) == edges(pm, "input->logits")
    assert mib_topn(pm, scores, 1, absolute=True) == edges(pm, "m1->logits")
    # a tie at the cut goes to the edge earlier in MIB's matrix (a0.h0 before a0.h1)
    assert mib_topn(pm, scores, 2, absolute=False) == edges(pm, "input->logits", "a0.h0->m0")
    assert len(mib_topn(pm, scores, 0, absolute=True)) == 0
    assert len(mib_topn(pm, scores, pm.n_edges, absolute=False)) == pm.n_edges
    with pytest.raises(ValueError, match="within 0.."):
        mib_topn(pm, scores, pm.n_edges + 1, absolute=True)


def test_prune_by_hand(pm):
    assert mib_prune(pm, edges(pm, "a0.h0->logits")) == set()  # a0.h0 has no input
    kept = edges(pm, "input->a0.h0<k>", "a0.h0->logits")
    assert mib_prune(pm, kept) == kept  # a path through the head's K input
    assert mib_prune(pm, edges(pm, "input->a0.h0<q>", "a0.h0->a1.h0<v>")) == set()  # no way out
    chain = edges(pm, "input->m0", "m0->a1.h3<q>", "a1.h3->logits", "input->a1.h2<v>")
    assert mib_prune(pm, chain) == chain - edges(pm, "input->a1.h2<v>")


def mib_prune_loop(pm, chosen):
    """MIB's Graph.prune, written out independently: node and edge sets, repeated until
    nothing changes (a node needs an incoming edge, the input excepted, and an outgoing
    one; an edge needs both its nodes)."""
    from edgewise.io.files import mib_edge_name

    def src(e):
        return mib_edge_name(e).split("->")[0]

    def dst(e):
        return mib_edge_name(e).split("->")[1].split("<")[0]

    edges_in = set(chosen)
    while True:
        outgoing = {src(e) for e in edges_in}
        incoming = {dst(e) for e in edges_in} | {"input"}
        nodes = outgoing & incoming
        new = {e for e in edges_in if src(e) in nodes and (dst(e) in nodes or dst(e) == "logits")}
        if new == edges_in:
            return new
        edges_in = new


def test_prune_equals_mibs_loop_on_random_sets(pm):
    rng = random.Random(0)
    for k in (3, 10, 25, 50, 80):
        for _ in range(20):
            chosen = set(rng.sample(list(pm.edges), k))
            assert mib_prune(pm, chosen) == mib_prune_loop(pm, chosen)


def test_mib_evaluate_by_hand_with_a_mock_measure(pm):
    # 110 edges: sizes [0, 0, 0, 1, 2, 5, 11, 22, 55, 110]. input->logits scores +10, every
    # other edge is negative, a0.h0->logits the most negative (-20).
    assert pm.n_edges == 110
    gen = torch.Generator().manual_seed(1)
    scores = {
        n: -torch.rand(m.mask_shape, generator=gen) * 0.9 - 0.05 for n, m in pm.dest_modules.items()
    }
    (good,) = edges(pm, "input->logits")
    (bad,) = edges(pm, "a0.h0->logits")
    scores[good.dest.module_name][good.patch_idx] = 10.0
    scores[bad.dest.module_name][bad.patch_idx] = -20.0
    seen = []

    def measure(model, loader, circuits):
        # value 1 when the circuit holds input->logits; empty 0, full 1
        seen.append([len(c) for c in circuits])
        return [float(good in c) for c in circuits], 0.0, 1.0

    r = mib_evaluate(pm, None, scores, measure=measure)
    # signed: input->logits is first from n = 1 on (and survives pruning: input -> logits)
    assert r.curve_cpr == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    # abs: n = 1 takes a0.h0->logits, pruned away (a0.h0 has no input); n = 2 adds input->logits
    assert r.curve_cmd == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert r.edge_counts_cmd[3:5] == [0, 1]
    # CPR: 0.005..0.01 half of 0.005 = 0.0025, then 0.01..1 all 1 = 0.99 -> 0.9925
    assert r.cpr == pytest.approx(0.9925)
    # CMD: |1 - f| = 1 up to 1% (0.009), half over 1%..2% (0.005) -> 0.014
    assert r.cmd == pytest.approx(0.014)
    assert r.average_cpr == pytest.approx(0.7) and r.average_cmd == pytest.approx(0.6)
    assert r.sizes == [0, 0, 0, 1, 2, 5, 11, 22, 55, 110] and r.edge_counts_cpr[-1] == 110
    assert len(seen) == 2  # one measurement per ranking
    assert all(b <= a for a, b in zip(r.sizes, r.edge_counts_cpr))  # pruning never adds


def test_circuit_submission_by_hand_appends_the_full_model(pm):
    (good,) = edges(pm, "input->logits")
    circuits = [set()] * 4 + [{good}] * 5  # given in any order: sorted by size

    def measure(model, loader, cs):
        return [0.5 * (good in c) for c in cs], 0.0, 1.0

    r = mib_evaluate_circuits(pm, None, list(reversed(circuits)), measure=measure)
    assert r.curve_cpr == [0, 0, 0, 0, 0.5, 0.5, 0.5, 0.5, 0.5, 1.0] == r.curve_cmd
    # CPR: 0.01..0.02 at (0 + 0.5)/2 -> 0.0025; 0.02..0.5 at 0.5 -> 0.24; 0.5..1 at 0.75 -> 0.375
    assert r.cpr == pytest.approx(0.6175)
    with pytest.raises(ValueError, match="9 circuits"):
        mib_evaluate_circuits(pm, None, circuits[:8], measure=measure)


@pytest.fixture(scope="module")
def toy():
    return load_mib_setup("toy-ioi", "toy_ioi", 32)


def test_toy_ioi_end_to_end_and_cli(toy, tmp_path, capsys):
    from edgewise.cli import main
    from edgewise.io.files import save_mib_json, save_prune_scores
    from edgewise.metrics.answers import batch_answer_diffs

    pm, test = toy
    gen = torch.Generator().manual_seed(0)
    scores = {n: torch.randn(m.mask_shape, generator=gen) for n, m in pm.dest_modules.items()}
    result = mib_evaluate(pm, test, scores)
    # the complete circuit is the full model; full and empty are the clean and corrupt runs
    assert result.curve_cpr[-1] == pytest.approx(1.0, abs=1e-6)
    assert result.curve_cmd[-1] == pytest.approx(1.0, abs=1e-6)
    with torch.inference_mode():
        clean = torch.cat([batch_answer_diffs(pm(b.clean)[:, -1].double(), b) for b in test])
        corrupt = torch.cat([batch_answer_diffs(pm(b.corrupt)[:, -1].double(), b) for b in test])
    assert result.full == pytest.approx(clean.mean().item(), abs=1e-4)
    assert result.empty == pytest.approx(corrupt.mean().item(), abs=1e-4)
    cpr, cmd = mib_area(result.curve_cpr)[0], mib_area(result.curve_cmd)[1]
    assert (result.cpr, result.cmd) == (cpr, cmd)

    path = save_mib_json(tmp_path / "scores.json", pm, scores)
    assert (
        main(
            [
                "mib",
                "evaluate",
                str(path),
                "--model",
                "toy-ioi",
                "--task",
                "toy_ioi",
                "--batch-size",
                "32",
                "--quiet",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out  # after TransformerLens' own "Moving model ..." line
    assert out[out.index("CPR ") :].strip() == format_result(result)
    assert f"CPR {result.cpr:.6f}" in out and f"CMD {result.cmd:.6f}" in out
    # an edgewise scores file gives the same; one with token positions is refused
    own = save_prune_scores(tmp_path / "s.safetensors", scores, pm)
    assert (
        main(["mib", "evaluate", str(own), "--task", "toy_ioi", "--batch-size", "32", "--quiet"])
        == 0
    )
    out = capsys.readouterr().out
    assert out[out.index("CPR ") :].strip() == format_result(result)
    positional = patchable_model(pm.wrapped_model, seq_len=15)
    pos_scores = {n: torch.zeros(m.mask_shape) for n, m in positional.dest_modules.items()}
    bad = save_prune_scores(tmp_path / "p.safetensors", pos_scores, positional)
    assert main(["mib", "evaluate", str(bad), "--task", "toy_ioi", "--quiet"]) == 2
    assert "token position" in capsys.readouterr().err


def test_toy_ioi_one_circuit_matches_a_direct_patched_run(toy):
    """The value measure_circuits gives a pruned circuit equals a tree-patched pass with
    that circuit's masks, computed here directly."""
    from edgewise.metrics.answers import batch_answer_diffs
    from edgewise.mib.evaluate import measure_circuits, mib_circuit
    from edgewise.runtime.ablation import batch_ablation
    from edgewise.types import AblationType

    pm, test = toy
    gen = torch.Generator().manual_seed(3)
    scores = {n: torch.randn(m.mask_shape, generator=gen) for n, m in pm.dest_modules.items()}
    circuit = mib_circuit(pm, scores, 55, absolute=True)
    (value,), _, _ = measure_circuits(pm, test, [circuit])
    masks = {n: torch.ones(m.mask_shape) for n, m in pm.dest_modules.items()}
    for e in circuit:
        masks[e.dest.module_name][e.patch_idx] = 0.0
    vals = []
    with torch.inference_mode():
        for b in test:
            patch = batch_ablation(pm, b, AblationType.RESAMPLE, "corrupt")
            vals.append(
                batch_answer_diffs(pm.run_patched(b.clean, masks, patch)[:, -1].double(), b)
            )
    assert value == pytest.approx(torch.cat(vals).mean().item(), abs=1e-5)
    assert list(itertools.islice(iter(circuit), 1))  # a nonempty circuit was tested
