"""auto-circuit's mask-state names, registries and experiment functions (edgewise.compat)
do what they do there, computed against edgewise's explicit-state functions."""

from __future__ import annotations

import json

import pytest
import torch

import edgewise as ew
from edgewise.models import random_model

from util import VOCAB, random_loader


@pytest.fixture(scope="module")
def pm():
    return ew.patchable_model(random_model(n_layers=2, d_vocab=VOCAB, dtype=torch.float64, seed=7))


def test_patch_mode_patches_the_named_edges_and_leaves_the_masks_set(pm):
    loader = random_loader(seed=1)
    b = next(iter(loader))
    patch = ew.src_ablations(pm, b.corrupt)
    chosen = [pm.edges[3], pm.edges[40].name, pm.edges[-1]]
    with ew.patch_mode(pm, patch, edges=chosen):
        got = pm(b.clean)
    want = pm.run_patched(b.clean, pm.masks_from_edges([pm.edges[3], pm.edges[40], pm.edges[-1]]), patch)
    torch.testing.assert_close(got, want)
    assert float(sum(m.sum() for m in pm.patch_masks.values())) == 3.0  # as auto-circuit leaves them
    torch.testing.assert_close(pm(b.clean), pm.wrapped_model(b.clean))  # outside: unpatched
    ew.set_all_masks(pm, 1.0)  # every edge patched: the corrupt run (the graph is complete)
    with ew.patch_mode(pm, patch):
        torch.testing.assert_close(pm(b.clean), pm.wrapped_model(b.corrupt), atol=1e-10, rtol=0)
    ew.set_all_masks(pm, 0.0)


def test_train_mask_mode_gives_the_mask_gradients(pm):
    loader = random_loader(seed=2, n=3, batch_size=3)
    b = next(iter(loader))
    patch = ew.src_ablations(pm, b.corrupt)
    ew.set_all_masks(pm, 0.25)
    with ew.train_mask_mode(pm) as masks:
        assert all(m.requires_grad for m in masks.values())
        with ew.patch_mode(pm, patch):
            logits = pm(b.clean)[pm.out_slice]
        loss = -(logits.gather(1, b.answers) - logits.gather(1, b.wrong_answers)).mean()
        loss.backward()
        grads = {n: m.grad.clone() for n, m in masks.items()}
    assert not any(m.requires_grad for m in pm.patch_masks.values())
    want = ew.mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", mask_val=0.25,
                                         progress=False)
    for n in want:
        torch.testing.assert_close(grads[n].double(), want[n].double(), atol=1e-6, rtol=1e-5)
    ew.set_all_masks(pm, 0.0)


def test_prune_score_helpers_and_edge_set_algebra(pm):
    e1, e2 = pm.edges[5], pm.edges[17]
    scores = pm.circuit_prune_scores(edges=[e1, e2.name])
    assert float(e1.prune_score(scores)) == float(e2.prune_score(scores)) == 1.0
    assert float(sum(s.sum() for s in scores.values())) == 2.0
    weighted = pm.circuit_prune_scores(edge_dict={e1: 0.5, e2.name: 2.0})
    assert float(e1.prune_score(weighted)) == 0.5 and float(e2.prune_score(weighted)) == 2.0
    assert all(s.dtype == torch.bool for s in pm.circuit_prune_scores(edges=[e1], bool=True).values())
    assert all(float(s.unique()) == 0.5 for s in pm.new_prune_scores(0.5).values())
    live = pm.current_patch_masks_as_prune_scores()
    live[e1.dest.module_name][e1.patch_idx] = 1.0  # shares storage with the model's masks
    assert float(e1.patch_mask(pm)[e1.patch_idx]) == 1.0
    ew.set_all_masks(pm, 0.0)
    rest = pm.edges - {e1, e2}
    assert isinstance(rest, set) and len(rest) == pm.n_edges - 2 and e1 not in rest
    assert pm.edges & {e1} == {e1} and pm.edges[0] == list(pm.edges)[0]


def test_registries_and_experiment_functions(pm):
    train, test = random_loader(seed=3), random_loader(seed=4)
    got = ew.LOGIT_DIFF_GRAD_PRUNE_ALGO.func(pm, train, None)
    want = ew.mask_gradient_prune_scores(pm, train, None, "logit", "avg_diff", mask_val=0.0,
                                         progress=False)
    assert all(torch.equal(got[n], want[n]) for n in want)
    assert ew.PRUNE_ALGO_DICT["Act Mag"] is ew.ACT_MAG_PRUNE_ALGO
    assert ew.LOGIT_DIFF_GRAD_PRUNE_ALGO.short_name == "EAP"
    task = ew.ExperimentTask("t", pm, train, test)
    algos = [ew.ACT_MAG_PRUNE_ALGO, ew.LOGIT_DIFF_GRAD_PRUNE_ALGO]
    scores = ew.run_prune_algos([task], algos)
    assert list(scores) == ["t"] and list(scores["t"]) == [a.key for a in algos]
    metrics = [ew.LOGIT_DIFF_METRIC, ew.CORRECT_ANSWER_PERCENT_METRIC, ew.CORRUPT_KL_DIV_METRIC]
    measured = ew.measure_prune_metrics([ew.AblationType.RESAMPLE], metrics, scores,
                                        ew.PatchType.TREE_PATCH, test_edge_counts=[0, 10, pm.n_edges])
    outs = ew.run_circuits(pm, test, [0, 10, pm.n_edges], scores["t"]["Act Mag"], progress=False)
    table = measured[ew.AblationType.RESAMPLE]
    assert table["Logit Diff"]["t"]["Act Mag"] == ew.measure_answer_diff(pm, test, outs)
    assert table["Correct Answer Percent"]["t"]["Act Mag"] == ew.measure_correct_ans_percent(pm, test, outs)
    with torch.inference_mode():  # as the metric computes them
        corrupt = {b.key: pm.outputs(b.corrupt) for b in test}
    kl = table["Corrupt KL Div"]["t"]["Act Mag"]
    assert kl == ew.measure_kl_div(pm, test, outs, full_outs=corrupt) == ew.measure_kl_div(pm, test, outs, False)


AUTO_CIRCUIT_ALGO_KEYS = [  # auto-circuit 1.0.1's PRUNE_ALGOS, in its order
    "Official Circuit", "Act Mag", "Random", "Edge Attribution Patching", "ACDC", "MSE ACDC",
    "Integrated Edge Gradients (Logit Diff)", "Edge Answer Log Prob Gradient At Clean",
    "Edge Answer Log Prob Diff Gradient At Clean", "Edge Answer Logit Diff Gradient At Clean",
    "Edge Answer Logit MSE Gradient At Clean", "Subnetwork Edge Probing", "Circuit Probing",
    "Subnetwork Tree Probing", "Tree Probing", "MSE Subnetwork Tree Probing", "MSE Tree Probing",
    "Opposite Tree Probing",
]


def test_every_auto_circuit_algorithm_is_registered():
    keys = [a.key for a in ew.PRUNE_ALGOS]
    assert [k for k in keys if k in AUTO_CIRCUIT_ALGO_KEYS] == AUTO_CIRCUIT_ALGO_KEYS
    assert ew.SUBNETWORK_TREE_PROBING_PRUNE_ALGO.short_name == "STP"
    assert ew.OPPOSITE_TREE_PROBING_PRUNE_ALGO.key == "Opposite Tree Probing"


def test_task_builds_what_the_same_calls_build_by_hand(tmp_path):
    """auto-circuit's Task: lazy, frozen model, loaders from the JSON, the graph with token
    positions only for a token circuit, and the official edges from its function."""
    from edgewise.benchmarks.toy_models import load

    path = ew.data._datasets_root().joinpath("toy_ioi.json")
    model = load("toy-ioi")
    calls = []

    def true_edges(pm, **kw):
        calls.append(kw)
        return set(pm.edges[:3])

    task = ew.Task("T", "T", (8, 4), (2, 3), False, model, str(path)[:-5], _true_edge_func=true_edges)
    assert not task._built  # nothing loaded yet
    assert task.true_edge_count == 3 and calls == [{}]
    assert not any(p.requires_grad for p in model.parameters())
    text = isinstance(json.loads(path.read_text())["prompts"][0]["clean"], str)
    train, test = ew.load_datasets_from_json(model if text else None, path, prepend_bos=text,
                                             batch_size=(8, 4), train_test_size=(16, 12),
                                             tail_divergence=text)  # fmt: skip
    assert [b.key for b in task.train_loader] == [b.key for b in train] and len(train) == 2
    assert [b.key for b in task.test_loader] == [b.key for b in test] and len(test) == 3
    assert task.model.seq_len is None and task.model.edges == ew.patchable_model(model).edges
    token = ew.Task("T2", "T2", 8, 1, True, model, str(path)[:-5], _true_edge_func=true_edges)
    assert token.model.seq_len == token.train_loader.seq_len is not None
    assert set(calls[-1]) == {"token_positions", "word_idxs", "seq_start_idx"}


def test_shipped_tasks_load_offline_with_their_official_circuits():
    from edgewise.benchmarks.official.tracr import tracr_official_edges

    task = ew.TASK_DICT["Tracr reverse Token Circuit"]
    assert task.model.seq_len == 6 and len(task.train_loader) == len(task.test_loader) == 11
    assert task.true_edges == tracr_official_edges(task.model, "reverse")
    toy = ew.TOY_IOI_COMPONENT_CIRCUIT_TASK
    assert toy.true_edge_count > 0 and toy.model.seq_len is None


def test_task_refuses_what_edgewise_cannot_load(tmp_path):
    (tmp_path / "empty.json").write_text('{"prompts": []}')
    with pytest.raises(ValueError, match="empty.json: the file has no prompts"):
        ew.Task("x", "x", 2, 1, False, "reverse", str(tmp_path / "empty")).init_task()
    with pytest.raises(ValueError, match="no file nope.json"):
        ew.Task("x", "x", 2, 1, False, "reverse", "nope").init_task()
    with pytest.raises(ValueError, match="sparse-autoencoder"):
        ew.Task("x", "x", 2, 1, False, "reverse", "tracr_reverse", autoencoder_input="mlp").init_task()
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set"):  # set by conftest.py
        ew.Task("x", "x", 2, 1, False, "no-such-model-xyz", "toy_ioi").init_task()
