"""Bootstrap intervals of scores and of faithfulness, CPR and CMD (edgewise.evaluation.bootstrap),
checked against hand-computable cases and against rescoring / re-measuring resampled prompts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgewise.benchmarks.toy_models import load, toy_ioi_dataloaders
from edgewise.cli import main
from edgewise.data import PromptDataLoader, PromptDataset
from edgewise.evaluation.bootstrap import (
    add_score_intervals,
    bootstrap_faithfulness,
    bootstrap_scores,
    per_prompt_metric,
    percentile_interval,
    resample_indices,
    resample_weights,
    resampled_loader,
)
from edgewise.evaluation.circuits import flat_prune_scores, run_circuits
from edgewise.evaluation.pipeline import measure_task_metric
from edgewise.metrics.answers import measure_mse
from edgewise.metrics.faithfulness import cpr_cmd, faithfulness_curve
from edgewise.patching.wrap import patchable_model
from edgewise.prune_algos import ALGORITHMS
from edgewise.visualize import write_report


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these tiny models gain nothing from two, and lose much on a
    shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ hand-computable
def test_percentile_interval_levels_on_a_hand_case():
    samples = torch.arange(101, dtype=torch.float64)  # 0, 1, ..., 100
    lo, hi = percentile_interval(samples, 0.9)
    assert (float(lo), float(hi)) == (5.0, 95.0)
    lo, hi = percentile_interval(samples, 0.95)
    assert (float(lo), float(hi)) == pytest.approx((2.5, 97.5), abs=1e-12)
    # 4 samples: positions 0.15 * 3 = 0.45 and 0.85 * 3 = 2.55, interpolated
    lo, hi = percentile_interval(torch.tensor([[4.0], [1.0], [3.0], [2.0]]), 0.7)
    assert torch.allclose(lo, torch.tensor([1.45], dtype=torch.float64))
    assert torch.allclose(hi, torch.tensor([3.55], dtype=torch.float64))


def test_percentile_interval_equals_numpy():
    samples = torch.randn(37, 3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lo, hi = percentile_interval(samples, 0.8)
    np.testing.assert_allclose(lo.numpy(), np.percentile(samples.numpy(), 10, axis=0), rtol=1e-12)
    np.testing.assert_allclose(hi.numpy(), np.percentile(samples.numpy(), 90, axis=0), rtol=1e-12)


def test_resamples_are_seeded_and_weights_count_draws():
    a, b = resample_indices(7, 5, seed=3), resample_indices(7, 5, seed=3)
    assert a.shape == (5, 7) and torch.equal(a, b)
    assert not torch.equal(a, resample_indices(7, 5, seed=4))
    w = resample_weights(torch.tensor([[0, 0, 2], [1, 2, 2]]), torch.tensor([1.0, 0.5, 0.25]), 3)
    assert torch.equal(w, torch.tensor([[1.5, 0.0, 0.25], [0.0, 1.0, 0.75]], dtype=torch.float64))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"level": 1.0}, "level"), ({"level": 0.0}, "level"), ({"n_resamples": 0}, "n_resamples")],
)
def test_bad_bootstrap_arguments_are_named(toy, kwargs, match):
    pm, train, _ = toy
    with pytest.raises(ValueError, match=match):
        bootstrap_scores(pm, train, "eap", **{"n_resamples": 2, **kwargs})


def test_per_prompt_method_is_refused_where_it_is_not_exact(toy):
    pm, train, _ = toy
    with pytest.raises(ValueError, match="rescore"):
        bootstrap_scores(pm, train, "magnitude", 2, method="per-prompt")
    with pytest.raises(ValueError, match="rescore"):
        bootstrap_scores(pm, train, "eap", 2, method="per-prompt",
                         ablation_type="tokenwise_mean_clean")  # fmt: skip
    with pytest.raises(ValueError, match="unknown algorithm"):
        bootstrap_scores(pm, train, "nope", 2)


# ------------------------------------------------------------------ the toy IOI model
@pytest.fixture(scope="module")
def toy():
    model = load("toy-ioi")
    # 6 test prompts in batches of 4 and 2: unequal batches are resampled batch by batch
    train, test = toy_ioi_dataloaders(model, batch_size=4, train_test_size=(8, 6), shuffle=False)
    test = PromptDataLoader(test.dataset, seq_len=test.seq_len, batch_size=4, drop_last=False)
    return patchable_model(model, slice_output="last_seq"), train, test


def _same_prompt_loader(loader: PromptDataLoader, copies: int, batch_size: int) -> PromptDataLoader:
    b = next(iter(loader))
    ds = PromptDataset(b.clean[:1].repeat(copies, 1), b.corrupt[:1].repeat(copies, 1),
                       b.answers[:1].repeat(copies, 1), b.wrong_answers[:1].repeat(copies, 1))  # fmt: skip
    return PromptDataLoader(ds, seq_len=loader.seq_len, batch_size=batch_size, drop_last=False)


def _flat(pm, scores):
    return flat_prune_scores(scores, pm).double()


@pytest.mark.parametrize("loader", ["train", "test"])  # batches [4, 4] and [4, 2]
def test_per_prompt_eap_equals_rescoring_the_resamples(toy, loader):
    pm, train, test = toy
    data = train if loader == "train" else test
    fast = bootstrap_scores(pm, data, "eap", 4, seed=5, keep_samples=True, progress=False)
    assert fast.method == "per-prompt"
    eap = _flat(pm, ALGORITHMS["eap"](pm, data, progress=False))
    tol = 1e-6 * float(eap.abs().max())  # float32 scores, summed in another order
    torch.testing.assert_close(_flat(pm, fast.point), eap, atol=tol, rtol=0)
    for r in range(2):  # an independent rescoring of the resampled prompts
        again = ALGORITHMS["eap"](pm, resampled_loader(data, fast.indices[r]), progress=False)
        torch.testing.assert_close(fast.samples[r], _flat(pm, again), atol=tol, rtol=0)
    slow = bootstrap_scores(pm, data, "eap", 4, seed=5, method="rescore", keep_samples=True,
                            progress=False)  # fmt: skip
    torch.testing.assert_close(fast.samples, slow.samples, atol=tol, rtol=0)
    lo, hi = percentile_interval(fast.samples, 0.95)
    assert torch.equal(_flat(pm, fast.lower), lo) and torch.equal(_flat(pm, fast.upper), hi)


def test_per_prompt_eap_in_mibs_scale_equals_rescoring_the_resamples(toy):
    """With ``scale="mean"`` the per-prompt combination is divided by the prompts too: the
    point is the algorithm's own mean-scale scores, each resample its rescoring."""
    pm, _, test = toy  # batches of 4 and 2
    fast = bootstrap_scores(pm, test, "eap", 3, seed=5, keep_samples=True, progress=False,
                            scale="mean")  # fmt: skip
    assert fast.method == "per-prompt"
    eap = _flat(pm, ALGORITHMS["eap"](pm, test, progress=False, scale="mean"))
    tol = 1e-6 * float(eap.abs().max())
    torch.testing.assert_close(_flat(pm, fast.point), eap, atol=tol, rtol=0)
    again = ALGORITHMS["eap"](pm, resampled_loader(test, fast.indices[0]), progress=False,
                              scale="mean")  # fmt: skip
    torch.testing.assert_close(fast.samples[0], _flat(pm, again), atol=tol, rtol=0)


def test_score_intervals_are_deterministic_for_a_seed(toy):
    pm, train, _ = toy
    a, b = (bootstrap_scores(pm, train, "eap", 6, seed=2, progress=False) for _ in range(2))
    c = bootstrap_scores(pm, train, "eap", 6, seed=3, progress=False)
    assert all(
        torch.equal(a.lower[n], b.lower[n]) and torch.equal(a.upper[n], b.upper[n]) for n in a.lower
    )
    assert any(not torch.equal(a.lower[n], c.lower[n]) for n in a.lower)


@pytest.mark.parametrize("algorithm", ["eap", "magnitude"])  # per-prompt and rescore
def test_identical_prompts_collapse_the_interval_to_the_point(toy, algorithm):
    pm, train, _ = toy
    same = _same_prompt_loader(train, 6, 4)
    r = bootstrap_scores(pm, same, algorithm, 5, seed=0, progress=False)
    point = _flat(pm, r.point)
    tol = 1e-9 * float(point.abs().max())
    torch.testing.assert_close(_flat(pm, r.lower), point, atol=tol, rtol=0)
    torch.testing.assert_close(_flat(pm, r.upper), point, atol=tol, rtol=0)
    own = _flat(pm, ALGORITHMS[algorithm](pm, same, progress=False))
    torch.testing.assert_close(point, own, atol=1e-6 * float(own.abs().max()), rtol=0)


def _sizes(pm):
    return [0, 3, 10, 30, pm.n_edges]


def test_faithfulness_intervals_equal_remeasuring_resampled_prompts(toy):
    pm, train, test = toy
    scores = ALGORITHMS["eap"](pm, train, progress=False)
    outs = run_circuits(pm, test, _sizes(pm), scores, progress=False)
    f = bootstrap_faithfulness(pm, test, outs, "logit_diff", n_resamples=12, seed=1)
    measured = measure_task_metric(pm, test, outs, "logit_diff")  # the data itself
    assert f.sizes == [s for s, _ in measured]
    assert f.faithfulness == pytest.approx([v for _, v in faithfulness_curve(measured)], abs=1e-12)
    assert f.cpr[0] == pytest.approx(cpr_cmd(measured)[0], abs=1e-12)
    assert f.cmd[0] == pytest.approx(cpr_cmd(measured)[1], abs=1e-12)
    indices = resample_indices(6, 12, seed=1)
    cprs = []
    for r in range(12):
        loader = resampled_loader(test, indices[r])
        again = measure_task_metric(pm, loader, run_circuits(pm, loader, _sizes(pm), scores,
                                                             progress=False), "logit_diff")  # fmt: skip
        curve = [v for _, v in faithfulness_curve(again)]
        assert f.samples[r].tolist() == pytest.approx(curve, abs=1e-5)
        cprs.append(cpr_cmd(again)[0])
    expect = np.percentile(cprs, [2.5, 97.5])
    assert [f.cpr[1], f.cpr[2]] == pytest.approx(expect.tolist(), abs=1e-5)
    lo, hi = percentile_interval(f.samples, 0.95)
    assert f.lower == lo.tolist() and f.upper == hi.tolist()
    assert all(a <= b for a, b in zip(f.lower, f.upper))


def test_faithfulness_interval_of_identical_prompts_is_the_point(toy):
    pm, train, test = toy
    same = _same_prompt_loader(test, 6, 4)
    scores = ALGORITHMS["eap"](pm, train, progress=False)
    outs = run_circuits(pm, same, _sizes(pm), scores, progress=False)
    f = bootstrap_faithfulness(pm, same, outs, n_resamples=8, seed=0)
    # to float32 rounding: a row of a matrix product can round differently by its place
    # in the batch, so identical prompts agree to ~1e-7, not bit for bit
    tol = dict(rel=1e-6, abs=1e-6)
    assert f.lower == pytest.approx(f.faithfulness, **tol)
    assert f.upper == pytest.approx(f.faithfulness, **tol)
    assert f.cpr[1:] == pytest.approx((f.cpr[0], f.cpr[0]), **tol)
    assert f.cmd[1:] == pytest.approx((f.cmd[0], f.cmd[0]), **tol)


def test_per_prompt_mse_averages_to_measure_mse():
    # real-valued answers: the batch means of the per-prompt -MSE are -measure_mse
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 5, (5, 3), generator=g)
    answers = torch.randn(5, 4, generator=g)
    ds = PromptDataset(clean, clean, answers, answers)
    loader = PromptDataLoader(ds, seq_len=3, batch_size=2, drop_last=False)
    outs = {
        k: {b.key: torch.randn(b.clean.shape[0], 4, generator=g) for b in loader} for k in (0, 9)
    }
    sizes, values = per_prompt_metric(None, loader, outs, "mse")
    want = [-v for _, v in measure_mse(None, loader, outs)]
    assert sizes == [0, 9]
    assert values.mean(dim=0).tolist() == pytest.approx(want, abs=1e-12)


# ------------------------------------------------------------------ report and command line
def _results(band: bool) -> dict:
    r = {"metric": "logit_diff", "measurements": [[0, 0.0], [5, 1.0], [10, 2.0]],
         "faithfulness": [[0, 0.0], [5, 0.5], [10, 1.0]], "cpr": 0.5, "cmd": 0.5, "top_edges": []}  # fmt: skip
    if band:
        r["bootstrap"] = {"n_resamples": 10, "level": 0.9, "seed": 0, "cpr": [0.4, 0.6],
                          "cmd": [0.45, 0.55],
                          "faithfulness": [[0, 0.0, 0.0], [5, 0.3, 0.7], [10, 1.0, 1.0]]}  # fmt: skip
    return {"model": "m", "task": "t", "n_edges": 10, "algorithms": {"eap": r}}


def test_report_draws_a_band_only_for_results_with_intervals(tmp_path):
    html = write_report(_results(True), tmp_path / "a.html").read_text()
    bands = [p for p in html.split("<path ")[1:] if p.startswith('class="band"')]
    assert len(bands) == 2  # the log-x and the linear-x chart
    d = bands[0].split('d="')[1].split('"')[0]
    assert d.count("L") == 5 and d.endswith("Z")  # 3 upper points, 3 lower, closed
    assert "90% bootstrap interval" in html and "[0.400, 0.600]" in html
    plain = write_report(_results(False), tmp_path / "b.html").read_text()
    assert 'class="band"' not in plain


def test_add_score_intervals_reads_each_top_edge(toy):
    pm, train, _ = toy
    r = bootstrap_scores(pm, train, "eap", 3, progress=False)
    e = pm.edges[7]
    result = {"top_edges": [{"edge": e.name, "seq_idx": e.seq_idx, "score": 0.0}]}
    add_score_intervals(result, pm, r)
    name = e.dest.module_name
    assert result["top_edges"][0]["ci"] == [float(r.lower[name][e.patch_idx]),
                                            float(r.upper[name][e.patch_idx])]  # fmt: skip
    assert result["bootstrap"]["scores"]["method"] == "per-prompt"


def test_discover_bootstrap_writes_intervals(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["discover", "--task", "toy_ioi", "--algo", "eap", "--out", str(out), "--quiet",
                 "--bootstrap", "5"]) == 0  # fmt: skip
    r = json.loads((out / "results.json").read_text())["algorithms"]["eap"]
    boot = r["bootstrap"]
    assert boot["n_resamples"] == 5 and boot["level"] == 0.95 and boot["seed"] == 0
    assert [row[0] for row in boot["faithfulness"]] == [s for s, _ in r["faithfulness"]]
    assert all(lo <= hi for _, lo, hi in boot["faithfulness"])
    assert boot["cpr"][0] <= boot["cpr"][1] and boot["cmd"][0] <= boot["cmd"][1]
    assert boot["scores"] == {"n_resamples": 5, "level": 0.95, "seed": 0, "method": "per-prompt"}
    assert all(len(d["ci"]) == 2 and d["ci"][0] <= d["ci"][1] for d in r["top_edges"])
    assert main(["report", str(out)]) == 0
    assert 'class="band"' in (out / "report.html").read_text()
    # a rerun with another N recomputes the intervals from the saved scores
    assert main(["discover", "--task", "toy_ioi", "--algo", "eap", "--out", str(out), "--quiet",
                 "--bootstrap", "3"]) == 0  # fmt: skip
    again = json.loads((out / "results.json").read_text())["algorithms"]["eap"]
    assert again["bootstrap"]["n_resamples"] == 3 and again["measurements"] == r["measurements"]
    assert main(["discover", "--task", "toy_ioi", "--out", str(out), "--bootstrap", "0"]) == 2
    assert "--bootstrap" in capsys.readouterr().err
