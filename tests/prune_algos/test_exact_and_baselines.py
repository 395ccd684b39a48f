"""Exact per-edge patching equals two independent forward passes; baselines (random,
activation magnitude, ground truth) are what they claim; all sit in the registry."""

from __future__ import annotations

import json

import pytest
import torch

from edgewise import (
    ALGORITHMS,
    AblationType,
    activation_magnitude_prune_scores,
    activation_norm_prune_scores,
    eap_ig_inputs_prune_scores,
    exact_patching_prune_scores,
    ground_truth_prune_scores,
    mask_gradient_prune_scores,
    measure_roc,
    patchable_model,
    random_prune_scores,
)
from edgewise.cli import main
from edgewise.models import random_model
from edgewise.prune_algos.loss import answer_loss, grad_values

from reference import reference_patched_logits
from util import VOCAB, grad_tol, random_loader


def _model(seed=0):
    return random_model(n_layers=2, d_vocab=VOCAB, n_kv_heads=2,
                                     positional_embedding_type="rotary", dtype=torch.float64,
                                     seed=seed)


@pytest.mark.parametrize("use_seq", [False, True])
@pytest.mark.parametrize("ablation", [AblationType.RESAMPLE, AblationType.ZERO])
def test_exact_patching_equals_two_independent_forward_passes(use_seq, ablation):
    pm = patchable_model(_model(), seq_len=5 if use_seq else None)
    loader = random_loader(seed=3, seq_len_edges=use_seq)
    gen = torch.Generator().manual_seed(0)
    sample = [pm.edges[int(i)] for i in torch.randperm(pm.n_edges, generator=gen)[:7]]
    got = exact_patching_prune_scores(pm, loader, None, "logprob", "avg_diff", ablation,
                                      edges=sample, edges_per_pass=3, progress=False)
    for e in sample:
        want = 0.0
        for batch in loader:
            tokens = batch.corrupt if ablation == AblationType.RESAMPLE else batch.clean
            patch = pm.src_outs(tokens)
            if ablation == AblationType.ZERO:
                patch = torch.zeros_like(patch[:, :1, :1])
            patched = reference_patched_logits(pm, batch.clean, pm.masks_from_edges([e]), patch)
            clean = pm.wrapped_model(batch.clean)

            def loss(logits, batch=batch):
                return answer_loss(grad_values(logits[pm.out_slice], "logprob"), batch, "avg_diff")

            want += float(loss(patched) - loss(clean))
        assert float(got[e.dest.module_name][e.patch_idx]) == pytest.approx(want, abs=1e-9)
    # every edge not asked for scores 0
    nonzero = sum(int((s != 0).sum()) for s in got.values())
    assert nonzero <= len(sample)


def test_exact_patching_does_not_depend_on_edges_per_pass_and_is_what_eap_linearises():
    pm = patchable_model(_model(1))
    loader = random_loader(seed=4)
    a = exact_patching_prune_scores(pm, loader, edges_per_pass=1, progress=False)
    b = exact_patching_prune_scores(pm, loader, edges_per_pass=7, progress=False)
    for n in a:
        torch.testing.assert_close(a[n], b[n], atol=1e-12, rtol=0)
    # EAP is exact patching's first-order approximation: correlated on a random model
    eap = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", mask_val=0.0)
    flat_a = torch.cat([a[n].flatten() for n in a])
    flat_e = torch.cat([eap[n].flatten() for n in eap])
    corr = torch.corrcoef(torch.stack([flat_a, flat_e]).double())[0, 1]
    assert corr > 0.5  # a random model: correlated, not equal (EAP is first order)


def test_random_scores_are_seeded():
    pm = patchable_model(_model())
    a, b, c = (random_prune_scores(pm, seed=s) for s in (0, 0, 1))
    for n in a:
        assert a[n].shape == pm.dest_modules[n].mask_shape
        torch.testing.assert_close(a[n], b[n])
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_activation_magnitude_is_auto_circuits_absolute_signed_mean():
    """|mean over a batch's prompts, positions and d_model| of each source's output,
    averaged over batches (TransformerLens' own per-head results, independently)."""
    pm = patchable_model(_model())
    loader = random_loader(seed=5)
    scores = activation_magnitude_prune_scores(pm, loader)
    hooks = [f"blocks.{b}.attn.hook_result" for b in range(2)]
    hooks += [f"blocks.{b}.hook_mlp_out" for b in range(2)] + ["blocks.0.hook_resid_pre"]
    means: dict[str, list] = {}
    with pm.adapter.flags(use_attn_result=True):
        for batch in loader:
            _, cache = pm.wrapped_model.run_with_cache(batch.clean, names_filter=hooks)
            for name in hooks:
                means.setdefault(name, []).append(cache[name])
    for e in pm.edges[::13]:
        acts = means[e.src.module_name]
        if e.src.head_idx is not None:
            acts = [a[:, :, e.src.head_idx] for a in acts]
        want = sum(a.double().mean().abs() for a in acts) / len(acts)
        assert float(scores[e.dest.module_name][e.patch_idx]) == pytest.approx(float(want), rel=1e-7)


def test_activation_norm_is_the_mean_norm_of_each_source():
    pm = patchable_model(_model())
    loader = random_loader(seed=5)
    scores = activation_norm_prune_scores(pm, loader)
    # independent: TransformerLens's own per-head results and MLP outputs
    norms: dict[str, list] = {}
    hooks = {f"blocks.{b}.attn.hook_result": None for b in range(2)}
    hooks.update({f"blocks.{b}.hook_mlp_out": None for b in range(2)})
    hooks["blocks.0.hook_resid_pre"] = None
    with pm.adapter.flags(use_attn_result=True):
        for batch in loader:
            _, cache = pm.wrapped_model.run_with_cache(batch.clean, names_filter=list(hooks))
            for name in hooks:
                norms.setdefault(name, []).append(cache[name].norm(dim=-1))
    for e in pm.edges[::17]:
        act = torch.cat(norms[e.src.module_name])
        want = act[:, :, e.src.head_idx].mean() if e.src.head_idx is not None else act.mean()
        assert float(scores[e.dest.module_name][e.patch_idx]) == pytest.approx(float(want), rel=1e-9)


def test_ground_truth_scores_give_auc_one_and_need_the_circuit():
    pm = patchable_model(_model())
    official = set(pm.edges[::9])
    scores = ground_truth_prune_scores(pm, None, official)
    assert measure_roc(pm, official, scores).auc == pytest.approx(1.0)
    with pytest.raises(ValueError, match="official_edges"):
        ground_truth_prune_scores(pm, None, None)


def test_registry_and_command_line_run_the_new_algorithms(tmp_path):
    assert {"exact", "random", "magnitude", "ground-truth"} <= set(ALGORITHMS)
    out = tmp_path / "run"
    assert main(["discover", "--task", "tracr_reverse", "--algo", "ground-truth", "random",
                 "magnitude", "exact", "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())["algorithms"]
    assert results["ground-truth"]["auc"] == pytest.approx(1.0)
    assert results["exact"]["auc"] > results["random"]["auc"]


def _eap_ig_reference(pm, loader, m, grad_function="logit", ks=None):
    """Independent EAP-IG on inputs with TransformerLens's own per-head hooks: for each
    path point ``k`` in ``ks`` (default ``1..m``) run the model on the embedding
    ``x_corrupt + k/m (x_clean - x_corrupt)``, take the gradient at every destination
    hook and dot it with corrupt minus clean source outputs, edge by edge; the average
    over the points, summed over batches."""
    from reference import capture_sources_and_dests

    scores = {n: torch.zeros(s.mask_shape, dtype=torch.float64) for n, s in pm.dest_modules.items()}
    point = pm.adapter.hook_point("blocks.0.hook_resid_pre")
    for batch in loader:
        _, clean_acts = capture_sources_and_dests(pm, batch.clean)
        _, corrupt_acts = capture_sources_and_dests(pm, batch.corrupt)
        x_clean = clean_acts["blocks.0.hook_resid_pre"].detach()
        x_corrupt = corrupt_acts["blocks.0.hook_resid_pre"].detach()
        for k in range(1, m + 1) if ks is None else ks:
            # requires_grad: so that the first block's inputs are part of the graph
            x = (x_corrupt + (k / m) * (x_clean - x_corrupt)).requires_grad_(True)
            h = point.register_forward_hook(lambda _m, _i, _o, x=x: x)
            try:
                logits, acts = capture_sources_and_dests(pm, batch.clean)
            finally:
                h.remove()
            loss = answer_loss(grad_values(logits, grad_function), batch, "avg_diff")
            names = list(pm.dest_modules)
            grads = dict(zip(names, torch.autograd.grad(loss, [acts[n] for n in names])))
            for e in pm.edges:
                diff = corrupt_acts[e.src.module_name] - clean_acts[e.src.module_name]
                if e.src.head_idx is not None:
                    diff = diff[:, :, e.src.head_idx]
                g = grads[e.dest.module_name]
                if e.dest.head_idx is not None:
                    g = g[:, :, e.dest.head_idx]
                scores[e.dest.module_name][e.patch_idx] += float((g * diff.detach()).sum()) / m
    return scores


@pytest.mark.parametrize("m", [1, 3])
def test_eap_ig_on_inputs_equals_an_independent_hook_computation(m):
    pm = patchable_model(_model(2))
    loader = random_loader(seed=6)
    got = eap_ig_inputs_prune_scores(pm, loader, None, "logit", "avg_diff", m, progress=False,
                                     endpoint="clean", scale="sum")  # fmt: skip
    want = _eap_ig_reference(pm, loader, m)
    scale = max(float(w.abs().max()) for w in want.values())
    for n in got:
        torch.testing.assert_close(got[n].double(), want[n], atol=grad_tol(pm, 1e-8) * scale, rtol=1e-7)
    if m == 1:  # one point, the clean input: EAP
        eap = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", mask_val=0.0)
        for n in got:
            torch.testing.assert_close(got[n], eap[n], atol=grad_tol(pm, 1e-8) * scale, rtol=1e-7)


@pytest.mark.parametrize("m", [1, 3])
def test_eap_ig_on_inputs_defaults_are_mibs_points_and_scale(m):
    """The function's and the registry's defaults: the points k = 0..m-1 (the corrupt end
    on the path, the clean end not) and the sum over batches divided by the number of
    prompts (7 prompts in batches of 3, 3 and 1). With m = 1 the one point is the
    corrupt input: the gradient of the corrupt run (its own tokens, no hook at all)."""
    pm = patchable_model(_model(2))
    loader = random_loader(seed=6, n=7, batch_size=3, drop_last=False)
    assert [b.clean.shape[0] for b in loader] == [3, 3, 1]
    want = {n: t / 7 for n, t in _eap_ig_reference(pm, loader, m, ks=range(0, m)).items()}
    scale = max(float(w.abs().max()) for w in want.values())
    by_function = eap_ig_inputs_prune_scores(pm, loader, integrated_grad_samples=m, progress=False)
    by_registry = ALGORITHMS["eap-ig-inputs"](pm, loader, integrated_grad_samples=m,
                                              progress=False)  # fmt: skip
    for got in (by_function, by_registry):
        for n in want:
            torch.testing.assert_close(got[n].double(), want[n], atol=grad_tol(pm, 1e-8) * scale, rtol=1e-7)
    other = _eap_ig_reference(pm, loader, m)  # k = 1..m differs
    assert any(not torch.allclose(other[n] / 7, want[n], atol=1e-6 * scale) for n in want)
    if m == 1:
        from reference import capture_sources_and_dests

        corrupt_run = {n: torch.zeros(s.mask_shape, dtype=torch.float64)
                       for n, s in pm.dest_modules.items()}  # fmt: skip
        for batch in loader:
            _, clean_acts = capture_sources_and_dests(pm, batch.clean)
            logits, acts = capture_sources_and_dests(pm, batch.corrupt)
            loss = answer_loss(grad_values(logits, "logit"), batch, "avg_diff")
            names = list(pm.dest_modules)
            grads = dict(zip(names, torch.autograd.grad(loss, [acts[n] for n in names])))
            for e in pm.edges:
                diff = acts[e.src.module_name].detach() - clean_acts[e.src.module_name].detach()
                if e.src.head_idx is not None:
                    diff = diff[:, :, e.src.head_idx]
                g = grads[e.dest.module_name]
                if e.dest.head_idx is not None:
                    g = g[:, :, e.dest.head_idx]
                corrupt_run[e.dest.module_name][e.patch_idx] += float((g * diff).sum()) / 7
        for n in want:
            torch.testing.assert_close(by_function[n].double(), corrupt_run[n],
                                       atol=grad_tol(pm, 1e-8) * scale, rtol=1e-7)  # fmt: skip


def test_eap_ig_on_inputs_refuses_prompts_of_different_lengths():
    from types import SimpleNamespace

    from edgewise import PromptDataset

    answers = [torch.tensor([1])] * 2
    with pytest.raises(ValueError, match="same length"):  # the dataset refuses first
        PromptDataset(torch.randint(3, VOCAB, (2, 5)), torch.randint(3, VOCAB, (2, 6)),
                      answers, answers)
    pm = patchable_model(_model())
    batch = SimpleNamespace(clean=torch.randint(3, VOCAB, (2, 5)),
                            corrupt=torch.randint(3, VOCAB, (2, 6)))
    with pytest.raises(ValueError, match="token lengths must match"):
        eap_ig_inputs_prune_scores(pm, [batch], progress=False)


def test_exact_patching_resumes_from_a_checkpoint_with_identical_scores(tmp_path, monkeypatch):
    import edgewise.prune_algos.exact as exact_mod

    pm = patchable_model(_model(3))
    loader = random_loader(seed=7)
    want = exact_patching_prune_scores(pm, loader, edges_per_pass=5, progress=False)
    path = tmp_path / "exact.pt"
    real = exact_mod.answer_loss
    calls = {"n": 0}

    def interrupted(*args, **kw):  # dies part-way through the second batch
        calls["n"] += 1
        if calls["n"] > 40:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(exact_mod, "answer_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        exact_patching_prune_scores(pm, loader, edges_per_pass=5, progress=False,
                                    checkpoint=path, checkpoint_seconds=0.0)
    assert path.exists()
    monkeypatch.setattr(exact_mod, "answer_loss", real)
    got = exact_patching_prune_scores(pm, loader, edges_per_pass=5, progress=False,
                                      checkpoint=path)
    for n in want:
        torch.testing.assert_close(got[n], want[n], atol=0, rtol=0)
    with pytest.raises(ValueError, match="other"):
        exact_patching_prune_scores(pm, loader, edges_per_pass=3, progress=False, checkpoint=path)
