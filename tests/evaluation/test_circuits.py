"""run_circuits, circuit sizes and the metrics over circuit outputs."""

from __future__ import annotations

import math

import pytest
import torch

from edgewise import (
    AblationType,
    EdgeCounts,
    PatchType,
    circuit_edges,
    edge_counts_util,
    flat_prune_scores,
    measure_all_answers_win_percent,
    measure_answer_diff,
    measure_answer_val,
    measure_correct_ans_percent,
    measure_kl_div,
    measure_logit_diff_percent,
    patchable_model,
    run_circuits,
    src_ablations,
)
from edgewise.models import random_bridge, random_model
from edgewise.runtime.ablation import batch_src_ablations

from reference import reference_patched_logits
from util import VOCAB, random_loader


@pytest.fixture(scope="module")
def pm():
    return patchable_model(random_model(n_layers=2, d_vocab=VOCAB, dtype=torch.float64))


def random_scores(pm, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(m.mask_shape, generator=gen) for n, m in pm.dest_modules.items()}


@pytest.mark.parametrize("ablation", list(AblationType))
def test_all_edges_kept_is_clean_model_and_none_kept_is_fully_ablated(pm, ablation):
    loader = random_loader(seed=1)
    scores = random_scores(pm)
    outs = run_circuits(pm, loader, [0, pm.n_edges], scores, ablation_type=ablation, progress=False)
    assert sorted(outs) == [0, pm.n_edges]
    patches = batch_src_ablations(pm, loader, ablation, None if ablation.mean_over_dataset else "corrupt")
    for b in loader:
        torch.testing.assert_close(outs[pm.n_edges][b.key], pm(b.clean)[pm.out_slice], atol=1e-10, rtol=0)
        ablated = reference_patched_logits(pm, b.clean, pm.new_masks(1.0), patches[b.key])
        torch.testing.assert_close(outs[0][b.key], ablated[pm.out_slice], atol=1e-10, rtol=0)
        if ablation == AblationType.RESAMPLE:
            torch.testing.assert_close(outs[0][b.key], pm(b.corrupt)[pm.out_slice], atol=1e-10, rtol=0)


def test_edge_patch_restores_clean_edges_on_the_corrupt_run(pm):
    loader = random_loader(seed=2)
    scores = random_scores(pm, 1)
    outs = run_circuits(pm, loader, [0, 7, pm.n_edges], scores, patch_type=PatchType.EDGE_PATCH,
                        progress=False)
    for b in loader:
        torch.testing.assert_close(outs[pm.n_edges][b.key], pm(b.clean)[pm.out_slice], atol=1e-10, rtol=0)
        torch.testing.assert_close(outs[0][b.key], pm(b.corrupt)[pm.out_slice], atol=1e-10, rtol=0)
        # the 7 top edges carry clean values, every other edge the corrupt run's
        masks = pm.masks_from_edges(circuit_edges(pm, scores, 7))
        want = reference_patched_logits(pm, b.corrupt, masks, pm.src_outs(b.clean))
        torch.testing.assert_close(outs[7][b.key], want[pm.out_slice], atol=1e-10, rtol=0)


@pytest.mark.parametrize("ablation", list(AblationType))
def test_edge_patch_gives_circuit_edges_the_clean_prompts_ablation(pm, ablation):
    """auto-circuit's EDGE_PATCH with any ablation: the corrupt prompts run, the circuit's
    edges carry the ablation computed from the clean prompts (dataset means: the dataset's),
    every other edge is left alone. Reversed: the clean prompts run, patched from the corrupt."""
    loader = random_loader(seed=5)
    scores = random_scores(pm, 3)
    top = circuit_edges(pm, scores, 9)
    masks = pm.masks_from_edges(top)
    for reverse, run_on, patch_from in ((False, "corrupt", "clean"), (True, "clean", "corrupt")):
        outs = run_circuits(pm, loader, [0, 9], scores, patch_type=PatchType.EDGE_PATCH,
                            ablation_type=ablation, reverse_clean_corrupt=reverse, progress=False)
        patches = batch_src_ablations(pm, loader, ablation, None if ablation.mean_over_dataset else patch_from)
        for b in loader:
            tokens = getattr(b, run_on)
            torch.testing.assert_close(outs[0][b.key], pm(tokens)[pm.out_slice], atol=1e-10, rtol=0)
            want = reference_patched_logits(pm, tokens, masks, patches[b.key])
            torch.testing.assert_close(outs[9][b.key], want[pm.out_slice], atol=1e-10, rtol=0)


def test_zero_ablation_takes_clean_corrupt_none_and_other_batch_ablations_refuse_it(pm):
    """auto-circuit passes clean_corrupt=None with zero ablation (no prompt's values are read)."""
    loader = random_loader(seed=6)
    zeros = batch_src_ablations(pm, loader, AblationType.ZERO, None)
    for b in loader:
        assert zeros[b.key].shape[0] == len(pm.srcs) and not zeros[b.key].any()
    for ablation in (AblationType.RESAMPLE, AblationType.BATCH_TOKENWISE_MEAN, AblationType.BATCH_ALL_TOK_MEAN):
        with pytest.raises(ValueError, match=f"clean_corrupt=None, but {ablation} ablation .* pass "
                                             "clean_corrupt='clean' or 'corrupt'"):
            batch_src_ablations(pm, loader, ablation, None)


def test_tree_patch_of_a_circuit_equals_reference_patching(pm):
    loader = random_loader(seed=3)
    scores = random_scores(pm, 2)
    outs = run_circuits(pm, loader, [10], scores, progress=False)
    top = circuit_edges(pm, scores, 10)
    assert len(top) == 10
    importance = sorted((abs(float(scores[e.dest.module_name][e.patch_idx])) for e in pm.edges), reverse=True)
    assert min(abs(float(scores[e.dest.module_name][e.patch_idx])) for e in top) == importance[9]
    for b in loader:
        masks = pm.new_masks(1.0)
        for e in top:
            masks[e.dest.module_name][e.patch_idx] = 0.0
        want = reference_patched_logits(pm, b.clean, masks, pm.src_outs(b.corrupt))
        torch.testing.assert_close(outs[10][b.key], want[pm.out_slice], atol=1e-10, rtol=0)


def test_tied_scores_enter_together_and_report_actual_sizes(pm):
    loader = random_loader(seed=4)
    scores = {n: torch.zeros(m.mask_shape) for n, m in pm.dest_modules.items()}
    edges = pm.edges
    for i, e in enumerate(edges[:10]):  # 4 edges of 3.0, 6 edges of -2.0 (importance 2)
        scores[e.dest.module_name][e.patch_idx] = 3.0 if i < 4 else -2.0
    outs = run_circuits(pm, loader, [1, 4, 5, 10, 0.5], scores, progress=False)
    assert sorted(outs) == [4, 10, pm.n_edges]  # 0.5 of all edges ties with the zero scores
    counts = edge_counts_util(pm.edges, EdgeCounts.GROUPS, scores)
    assert counts == [0, 4, 10, pm.n_edges]


def test_edge_counts_util_defaults_and_fractions():
    """auto-circuit's sizes: LOGARITHMIC is 1-9, 10-90 by 10, 100-900 by 100, ... plus 0
    and all edges (41 sizes for GPT-2 small's 32,491 edges); 0 and all edges are added
    when more than two sizes result and removed otherwise."""
    assert edge_counts_util(10) == list(range(11))
    log = edge_counts_util(32491)
    assert len(log) == 41
    assert log[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20] and log[-3:] == [20000, 30000, 32491]
    dense = edge_counts_util(1000, EdgeCounts.LOGARITHMIC_DENSE)
    assert dense[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11] and 110 in dense and 111 not in dense
    assert dense[-1] == 1000
    assert edge_counts_util(200, [0.5, 3, 7]) == [0, 3, 7, 100, 200]
    assert edge_counts_util(200, [0.5, 3]) == [3, 100]
    assert edge_counts_util(200, [0, 7]) == [7]
    assert edge_counts_util(200, [0, 7], zero_edges=True) == [0, 7]
    assert edge_counts_util(200, [7], true_edge_count=11) == [7, 11]
    with pytest.raises(ValueError, match="outside"):
        edge_counts_util(5, [9])


def test_metrics_against_hand_computation(pm):
    loader = random_loader(seed=5, n_answers=[1, 2, 1, 3, 2, 1])
    scores = random_scores(pm, 3)
    outs = run_circuits(pm, loader, [0, 20, pm.n_edges], scores, progress=False)
    full = {b.key: pm(b.clean)[:, -1] for b in loader}
    diffs, vals, correct, kls = {}, {}, {}, {}
    for size, by_batch in outs.items():
        d, v, c, k = [], [], [], []
        for b in loader:
            out = by_batch[b.key]
            for i in range(out.shape[0]):
                a, w = b.answers[i], b.wrong_answers[i]
                d.append(out[i, a].mean() - out[i, w].mean())
                v.append(out[i, a].mean())
                w = w[~torch.isin(w, a)]  # a wrong answer that is also an answer is ignored
                c.append(float(out[i, a].min() > out[i, w].max()) if w.numel()
                         else float(bool(torch.isin(out[i].argmax(), a))))
                p, q = full[b.key][i].softmax(-1), out[i].softmax(-1)
                k.append((p * (p.log() - q.log())).sum())
        diffs[size], vals[size] = torch.stack(d).mean().item(), torch.stack(v).mean().item()
        correct[size], kls[size] = 100 * sum(c) / len(c), torch.stack(k).mean().item()
    def check(measured, want, **kw):
        assert [s for s, _ in measured] == sorted(want)
        assert [v for _, v in measured] == pytest.approx([want[s] for s in sorted(want)], **kw)

    check(measure_answer_diff(pm, loader, outs), diffs)
    check(measure_answer_val(pm, loader, outs), vals)
    check(measure_all_answers_win_percent(pm, loader, outs), correct)
    check(measure_kl_div(pm, loader, outs), kls, abs=1e-9)
    assert dict(measure_kl_div(pm, loader, outs))[pm.n_edges] == pytest.approx(0.0, abs=1e-12)
    pct = dict(measure_logit_diff_percent(pm, loader, outs))
    assert pct[pm.n_edges] == pytest.approx(100.0)
    assert pct[20] == pytest.approx(100 * diffs[20] / diffs[pm.n_edges])
    probs = measure_answer_diff(pm, loader, outs, "probs")
    assert all(-1 <= v <= 1 for _, v in probs)


def test_dataset_mean_ablation_is_the_mean_source_output(pm):
    loader = random_loader(seed=6)
    mean = src_ablations(pm, loader, AblationType.TOKENWISE_MEAN_CLEAN_AND_CORRUPT)
    outs = [pm.src_outs(t) for b in loader for t in (b.clean, b.corrupt)]
    torch.testing.assert_close(mean, torch.cat(outs, dim=1).mean(dim=1, keepdim=True))


def test_run_circuits_on_a_bridge_with_token_positions():
    pm = patchable_model(random_bridge("gpt2", d_vocab=VOCAB, dtype=torch.float64), seq_len=5)
    loader = random_loader(seed=7, seq_len_edges=True)
    scores = random_scores(pm, 4)
    outs = run_circuits(pm, loader, [0, 15, pm.n_edges], scores, progress=False)
    top = circuit_edges(pm, scores, 15)
    assert {e.seq_idx for e in top} - {None} and len(top) == 15
    for b in loader:
        torch.testing.assert_close(outs[pm.n_edges][b.key], pm(b.clean)[pm.out_slice], atol=1e-10, rtol=0)
        masks = pm.masks_from_edges(set(pm.edges) - set(top))
        want = reference_patched_logits(pm, b.clean, masks, pm.src_outs(b.corrupt))
        torch.testing.assert_close(outs[15][b.key], want[pm.out_slice], atol=1e-10, rtol=0)


def test_scores_of_the_wrong_shape_are_rejected(pm):
    loader = random_loader()
    scores = random_scores(pm)
    scores["blocks.0.hook_mlp_in"] = torch.zeros(2)
    with pytest.raises(ValueError, match="were the scores made for another model"):
        run_circuits(pm, loader, [1], scores)


def test_stacked_circuits_in_one_pass_equal_one_pass_each(pm):
    loader = random_loader(seed=8)
    scores = random_scores(pm, 5)
    sizes = [0, 3, 17, 60, pm.n_edges]
    one = run_circuits(pm, loader, sizes, scores, progress=False, circuits_per_pass=1)
    for per_pass in (2, 5):
        many = run_circuits(pm, loader, sizes, scores, progress=False, circuits_per_pass=per_pass)
        assert sorted(many) == sorted(one)
        for size in one:
            for key in one[size]:
                torch.testing.assert_close(many[size][key], one[size][key], atol=1e-10, rtol=0)


def test_per_position_answers_correct_percent_and_mse():
    from edgewise import PromptDataLoader, PromptDataset, measure_mse

    clean = torch.tensor([[0, 1, 2], [0, 2, 1]])
    answers = [torch.tensor([[1], [2]]), torch.tensor([[2], [0]])]  # per output position
    loader = PromptDataLoader(PromptDataset(clean, clean, answers, answers), batch_size=2)
    (batch,) = list(loader)
    out = torch.zeros(2, 2, 3)
    out[0, 0, 1] = out[0, 1, 2] = out[1, 0, 2] = 1.0  # 3 of 4 positions right
    out[1, 1, 1] = 1.0
    assert measure_all_answers_win_percent(None, loader, {5: {batch.key: out}}) == [(5, 75.0)]
    reals = [torch.tensor([[0.5], [1.0]]), torch.tensor([[0.0], [2.0]])]
    loader = PromptDataLoader(PromptDataset(clean, clean, reals, reals), batch_size=2)
    (batch,) = list(loader)
    pred = torch.tensor([[[0.5], [0.0]], [[1.0], [2.0]]])
    assert measure_mse(None, loader, {3: {batch.key: pred}}) == [(3, pytest.approx((1.0 + 1.0) / 4))]


def test_auto_circuit_metrics_mean_what_they_mean_there():
    """measure_correct_ans_percent (top-1 over the vocabulary, or the answer at least every
    wrong answer), measure_answer_val(wrong_answer=), measure_answer_diff_percent and the
    batch weighting (mean of batch means), computed by hand."""
    from edgewise import (
        PromptDataLoader,
        PromptDataset,
        measure_answer_diff_percent,
        measure_answer_val,
    )

    clean = torch.zeros(3, 2, dtype=torch.long)
    answers, wrong = torch.tensor([[1], [2], [0]]), torch.tensor([[2], [0], [3]])
    loader = PromptDataLoader(PromptDataset(clean, clean, answers, wrong), batch_size=2,
                              drop_last=False)
    b1, b2 = list(loader)  # 2 prompts, then 1
    out = {b1.key: torch.tensor([[0.0, 1.0, 1.0, 3.0], [0.5, 0.0, 2.0, 0.0]]),
           b2.key: torch.tensor([[1.0, 0.0, 0.0, 1.0]])}
    # top-1: prompt 1 no (3 is top), prompt 2 yes; prompt 3 ties with token 3, argmax is 0: yes
    assert measure_correct_ans_percent(None, loader, {4: out}) == [(4, pytest.approx(75.0))]
    # answer >= every wrong answer: prompt 1 ties (1 >= 1) yes, 2 yes, 3 ties yes
    assert measure_correct_ans_percent(None, loader, {4: out}, True) == [(4, pytest.approx(100.0))]
    vals = dict(measure_answer_val(None, loader, {4: out}))
    assert vals[4] == pytest.approx(((1.0 + 2.0) / 2 + 1.0) / 2)
    wrong_vals = dict(measure_answer_val(None, loader, {4: out}, wrong_answer=True))
    assert wrong_vals[4] == pytest.approx(((1.0 + 0.5) / 2 + 1.0) / 2)
    soft = dict(measure_answer_val(None, loader, {4: out}, prob_func="softmax"))
    want = [out[b1.key].softmax(-1)[[0, 1], [1, 2]].mean(), out[b2.key].softmax(-1)[0, 0]]
    assert soft[4] == pytest.approx(float(sum(want) / 2))

    class Full:  # the "full model": returns fixed logits
        out_slice = (slice(None), -1)

        def __call__(self, tokens):
            return torch.ones(tokens.shape[0], 2, 4) * torch.tensor([0.0, 2.0, 1.0, 0.0])

    full_diffs = [torch.tensor([2.0 - 1.0, 1.0 - 0.0]), torch.tensor([0.0 - 0.0])]
    circ_diffs = [torch.tensor([1.0 - 1.0, 2.0 - 0.5]), torch.tensor([1.0 - 1.0])]
    got = dict(measure_answer_diff_percent(Full(), loader, {4: out}))
    want = 100 * (sum(d.mean() for d in circ_diffs) / 2) / (sum(d.mean() for d in full_diffs) / 2)
    assert got[4] == pytest.approx(float(want))
    with pytest.raises(ValueError, match="exactly one answer"):
        two = PromptDataLoader(PromptDataset(clean, clean, torch.tensor([[1, 2]] * 3), wrong),
                               batch_size=3)
        (b,) = list(two)
        measure_correct_ans_percent(None, two, {1: {b.key: torch.zeros(3, 4)}})


def test_measurements_auc_and_thresholds():
    from edgewise import desc_prune_scores, measurements_auc, prune_scores_threshold

    pts = [(0, 1.0), (10, 3.0), (100, 2.0)]
    # linear: trapezoids above the empty circuit's 1.0: 10*(0+2)/2 + 90*(2+1)/2
    assert measurements_auc(pts, log_x=False, log_y=False) == pytest.approx(10 + 135)
    # log x: the 0->10 segment is left out; 1 decade * (2+1)/2
    assert measurements_auc(pts, log_x=True, log_y=False) == pytest.approx(1.5)
    # log y with y_min 0.1: values log10(y) + 1, baseline log10(1) + 1 = 1
    ly = [math.log10(y) + 1 for _, y in pts]
    assert measurements_auc(pts, log_x=True, log_y=True, y_min=0.1) == pytest.approx(
        ((ly[1] - ly[0]) + (ly[2] - ly[0])) / 2)
    assert measurements_auc([(0, 1.0), (5, 0.0)], False, False) == 1e-3  # floored at eps
    with pytest.raises(ValueError, match="size 0"):
        measurements_auc([(1, 1.0), (2, 2.0)], False, False)
    scores = {"a": torch.tensor([0.5, -3.0]), "b": torch.tensor([[2.0, -0.5]])}
    assert desc_prune_scores(scores).tolist() == [3.0, 2.0, 0.5, 0.5]
    assert float(prune_scores_threshold(scores, 3)) == 0.5
    assert math.isinf(float(prune_scores_threshold(scores, 0)))


def test_float64_scores_give_circuits_of_exactly_the_requested_size(pm):
    """Thresholds are taken in the scores' own dtype: rounding float64 scores to float32
    once moved a threshold above the very score it came from, dropping that edge (found
    by the auto-circuit parity harness: run_circuits then disagreed with patching the
    top-k edges directly)."""
    gen = torch.Generator().manual_seed(11)
    scores = {n: 10 + torch.rand(m.mask_shape, generator=gen, dtype=torch.float64)
              for n, m in pm.dest_modules.items()}
    sizes = [1, 5, 17, 40, 77]
    outs = run_circuits(pm, random_loader(seed=2), sizes, scores, progress=False)
    assert sorted(outs) == sizes
    flat = flat_prune_scores(scores, pm)
    assert flat.dtype == torch.float64
    for k in sizes:
        want = {pm.edges[i] for i in flat.abs().argsort(descending=True)[:k].tolist()}
        assert set(circuit_edges(pm, scores, k)) == want
