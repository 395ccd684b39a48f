"""auto-circuit's remaining names (edgewise.compat_ops, PatchableModel and Node
attributes, str(edge), the metric registry), checked against hand values and independent
computations (auto-circuit itself is not installed here)."""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import edgewise as ew
from edgewise.data import PromptPairBatch
from edgewise.graph.build import GraphSpec, build_graph
from edgewise.models import random_model

from util import VOCAB, random_loader


@pytest.fixture(scope="module")
def pm():
    return ew.patchable_model(random_model(n_layers=2, d_vocab=VOCAB, dtype=torch.float64, seed=3))


def _batch(answers, wrong):
    n = len(answers)
    tok = torch.zeros(n, 2, dtype=torch.long)
    return PromptPairBatch(0, 0, tok, tok, answers, wrong)


# ------------------------------------------------------------------ tensor_ops helpers

VALS = torch.tensor([[1.0, 5.0, 2.0, 0.0], [3.0, 1.0, 4.0, 4.0]], dtype=torch.float64)


def test_answer_value_helpers_by_hand():
    b = _batch(torch.tensor([[1], [2]]), torch.tensor([[0, 2], [3, 1]]))
    assert ew.indices_vals(VALS, b.answers).tolist() == [[5.0], [4.0]]
    assert float(ew.vocab_avg_val(VALS, b.answers)) == 4.5
    assert float(ew.batch_avg_answer_val(VALS, b)) == 4.5
    assert float(ew.batch_avg_answer_val(VALS, b, wrong_answer=True)) == (1 + 2 + 4 + 1) / 4
    # per prompt: answer mean minus wrong-answer mean: 5 - 1.5, 4 - 2.5
    assert ew.batch_answer_diffs(VALS, b).tolist() == [3.5, 1.5]
    assert float(ew.batch_avg_answer_diff(VALS, b)) == 2.5
    target = VALS * 2  # differences doubled: 50 percent each
    assert ew.batch_answer_diff_percents(VALS, target, b).tolist() == [50.0, 50.0]
    # lists of per-prompt answers (different counts): the mean of the prompts' means
    ragged = _batch([torch.tensor([1, 2]), torch.tensor([0])], [torch.tensor([3]), torch.tensor([1, 2])])
    assert float(ew.batch_avg_answer_val(VALS, ragged)) == ((5 + 2) / 2 + 3) / 2
    with pytest.raises(ValueError, match="vals has 2 dimensions and indices 1"):
        ew.indices_vals(VALS, torch.tensor([1, 2]))


def test_correct_answer_proportions_by_hand():
    # prompt 0: top token 1 (answer 1: right); prompt 1: top token 2 (answer 3 ties at 4: argmax picks 2)
    b = _batch(torch.tensor([[1], [3]]), torch.tensor([[2], [2]]))
    assert float(ew.correct_answer_proportion(VALS, b)) == 0.5
    # answer at least every wrong answer: 5 >= 2 and 4 >= 4 (a tie counts as correct)
    assert float(ew.correct_answer_greater_than_incorrect_proportion(VALS, b)) == 1.0
    # prompt 0: 2 against 1 and 0 (right); prompt 1: 1 against 3 and 4 (wrong)
    b2 = _batch(torch.tensor([[2], [1]]), torch.tensor([[0, 3], [0, 2]]))
    assert float(ew.correct_answer_greater_than_incorrect_proportion(VALS, b2)) == 0.5
    with pytest.raises(ValueError, match="exactly one answer per prompt"):
        ew.correct_answer_proportion(VALS, _batch(torch.tensor([[1, 2], [0, 1]]), torch.tensor([[0], [0]])))


@given(st.integers(0, 2**31 - 1))
@settings(max_examples=20, deadline=None)
def test_multibatch_kl_div_is_the_mean_kl_over_rows(seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(2, 3, 7, generator=g, dtype=torch.float64).log_softmax(-1)
    b = torch.randn(2, 3, 7, generator=g, dtype=torch.float64).log_softmax(-1)
    rows = [float((q.exp() * (q - p)).sum()) for p, q in zip(a.reshape(-1, 7), b.reshape(-1, 7))]
    assert math.isclose(float(ew.multibatch_kl_div(a, b)), sum(rows) / 6, rel_tol=1e-12)
    want = torch.nn.functional.kl_div(a, b, reduction="sum", log_target=True) / 6
    assert math.isclose(float(ew.multibatch_kl_div(a, b)), float(want), rel_tol=1e-12)


def test_auc_wrappers_by_hand():
    curves = {"a": [(0, 1.0), (2, 3.0), (4, 1.0)], "one": [(0, 5.0)]}
    # heights above the size-0 value 1: 0, 2, 0 -> trapezoids 2 + 2
    assert ew.algo_measurements_auc(curves, log_x=False, log_y=False) == {"a": 4.0}
    assert ew.task_measurements_auc({"t": curves}, False, False) == {"t": {"a": 4.0}}
    assert ew.metric_measurements_auc({"m": {"t": curves}}, False, False) == {"m": {"t": {"a": 4.0}}}


def test_cache_round_trip_and_missing_file(tmp_path, capsys):
    data = {"scores": {"blocks.0.hook_q_input": torch.arange(6.0).reshape(2, 3)}, "n": 3}
    path = ew.save_cache(data, tmp_path / "cache", "run")
    assert path.parent == tmp_path / "cache" and path.name.startswith("run-") and path.suffix == ".pkl"
    assert os.listdir(tmp_path / "cache") == [path.name]  # no temporary file left
    back = ew.load_cache(tmp_path / "cache", path.name)
    assert back["n"] == 3 and torch.equal(back["scores"]["blocks.0.hook_q_input"], data["scores"]["blocks.0.hook_q_input"])
    assert str(path) in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no cache file .*nope.pkl"):
        ew.load_cache(tmp_path / "cache", "nope.pkl")


# ------------------------------------------------------------------ model, nodes, edges


def test_patchable_model_attributes_and_pass_throughs(pm):
    assert pm.seq_dim == 1 and pm.is_transformer is True and pm.is_factorized is pm.factorized is True
    assert pm.kv_caches is None
    assert pm.blocks is pm.wrapped_model.blocks
    b = next(iter(random_loader(seed=5)))
    logits, cache = pm.run_with_cache(b.clean)
    want, want_cache = pm.wrapped_model.run_with_cache(b.clean)
    assert torch.equal(logits, want) and torch.equal(cache["blocks.1.hook_resid_post"], want_cache["blocks.1.hook_resid_post"])
    assert torch.equal(pm.input_to_embed(b.clean)[0], pm.wrapped_model.input_to_embed(b.clean)[0])
    assert pm.to_tokens() == pm.wrapped_model.to_tokens  # auto-circuit returns the method
    assert pm.to_str_tokens() == pm.wrapped_model.to_str_tokens


def test_new_prune_scores_take_the_model_dtype():
    for dtype, want in ((torch.float64, torch.float64), (torch.float32, torch.float32)):
        m = ew.patchable_model(random_model(n_layers=1, d_vocab=VOCAB, dtype=dtype))
        assert {s.dtype for s in m.new_prune_scores().values()} == {want}
        assert {s.dtype for s in m.circuit_prune_scores(edges=[m.edges[0]]).values()} == {want}


def test_str_of_an_edge_is_its_name_and_repr_keeps_the_position():
    m = ew.patchable_model(random_model(n_layers=1, d_vocab=VOCAB), seq_len=3)
    e = m.edge("A0.0->Resid End", 2)
    assert str(e) == f"{e}" == "A0.0->Resid End"
    assert repr(e) == "Edge(A0.0->Resid End@2)"
    assert str(e.src) == "A0.0" and str(e.dest) == "Resid End"


@given(n_layers=st.integers(1, 3), n_heads=st.integers(1, 3), factorized=st.booleans(),
       separate_qkv=st.booleans(), attn_only=st.booleans())
@settings(max_examples=30, deadline=None)
def test_min_src_idx_gives_every_edges_mask_index(n_layers, n_heads, factorized, separate_qkv, attn_only):
    g = build_graph(GraphSpec(n_layers, n_heads, n_heads, attn_only=attn_only), factorized, separate_qkv)
    for e in g.edges:
        assert e.patch_idx[-1] == e.src.src_idx - e.dest.min_src_idx
        if factorized:
            assert e.dest.min_src_idx == 0


def test_node_weights_and_head_dims(pm):
    by_name = {n.name: n for n in pm.nodes}
    assert (by_name["Resid Start"].weight, by_name["Resid Start"].head_dim) == ("embed.W_E", None)
    head = by_name["A1.2"]
    assert (head.weight, head.head_dim, head.weight_head_dim) == ("blocks.1.attn.W_O", 2, 0)
    assert by_name["MLP 0"].weight in ("blocks.0.mlp.W_out", "blocks.0.mlp.W_in")
    src_mlp = next(n for n in pm.srcs if n.name == "MLP 0")
    dest_mlp = next(n for n in pm.dests if n.name == "MLP 0")
    assert (src_mlp.weight, dest_mlp.weight) == ("blocks.0.mlp.W_out", "blocks.0.mlp.W_in")
    assert by_name["A1.2.K"].weight == "blocks.1.attn.W_K" and by_name["A1.2.K"].weight_head_dim == 0
    assert by_name["Resid End"].weight == "unembed.W_U" and by_name["Resid End"].weight_head_dim is None
    merged = ew.patchable_model(pm.wrapped_model, separate_qkv=False)
    assert next(n for n in merged.dests if n.name == "A0.1").weight == "blocks.0.attn.W_QKV"


def test_prune_metric_registry_has_auto_circuits_names_and_order():
    assert [(m.key, m.name) for m in ew.PRUNE_METRICS] == [
        ("Clean KL Div", "KL Divergence"), ("Corrupt KL Div", "KL Divergence"),
        ("Answer Prob", "Answer Probability"), ("Answer Logit", "Answer Logit"),
        ("Wrong Answer Logit", "Wrong Answer Logit"), ("Answer Logprob", "Answer Log Probability"),
        ("Logit Diff", "Logit Difference"), ("Prob Diff", "Probability Difference"),
        ("Logprob Diff", "Log Probability Difference"), ("Logit Diff Percent", "Logit Difference Percent"),
        ("Prob Diff Percent", "Probability Difference Percent"),
        ("LogProb Diff Percent", "Log Probability Difference Percent"),
        ("Correct Answer Percent", "Correct Answer Percent"),
        ("Correct Answer Greater Than Incorrect Percent", "Correct Answer Greater Than Incorrect Percent"),
    ]
    assert ew.ANSWER_PROB_METRIC is ew.PRUNE_METRIC_DICT["Answer Prob"] is ew.PRUNE_METRICS[2]
    assert ew.LOBPROB_DIFF_PERCENT_METRIC is ew.LOGPROB_DIFF_PERCENT_METRIC is ew.PRUNE_METRICS[11]


def test_mask_gradient_zero_ablation_with_clean_corrupt_none(pm):
    """Zero ablation reads no prompt, so clean_corrupt=None (auto-circuit's value) gives
    the scores of either side."""
    loader = random_loader(seed=6)
    kw = dict(grad_function="logit", answer_function="avg_diff", mask_val=0.0,
              ablation_type=ew.AblationType.ZERO, progress=False)
    none = ew.mask_gradient_prune_scores(pm, loader, None, clean_corrupt=None, **kw)
    corrupt = ew.mask_gradient_prune_scores(pm, loader, None, clean_corrupt="corrupt", **kw)
    assert all(torch.equal(none[n], corrupt[n]) for n in none)
