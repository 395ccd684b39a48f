"""optimal_ablation_values: starts at the mean over clean prompts and positions, and the
constants it returns, patched in as ablations of a module's edges, lose less than the mean
and zero ablations on the objective they were fitted to."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgewise import patchable_model
from edgewise.models import random_model
from edgewise.prune_algos.loss import answer_loss, grad_values
from edgewise.prune_algos.optimal_ablation import optimal_ablation_values
from edgewise.runtime.ablation import src_ablations
from edgewise.types import AblationType

from util import VOCAB, random_loader


@pytest.fixture(scope="module")
def pm():
    return patchable_model(random_model(n_layers=2, d_vocab=VOCAB, dtype=torch.float64, seed=5))


def test_zero_steps_is_the_mean_over_clean_prompts_and_positions(pm):
    loader = random_loader(seed=1, n=4, batch_size=2)
    got = optimal_ablation_values(pm, loader, steps=0)
    every = torch.cat([b.clean for b in loader])
    want = src_ablations(pm, every, AblationType.BATCH_ALL_TOK_MEAN)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def _loss(pm, loader, module, patch, objective):
    """The objective, averaged over batches, with every edge out of ``module`` patched
    by ``patch`` (the patch machinery, not the hooks the fit used)."""
    masks = pm.new_masks(0.0)
    for e in pm.edges:
        if module.src_lo <= e.src.src_idx < module.src_hi:
            masks[e.dest.module_name][e.patch_idx] = 1.0
    total = 0.0
    with torch.no_grad():
        for b in loader:
            logits = pm.run_patched(b.clean, masks, patch)
            if objective == "lm":
                total += F.cross_entropy(
                    logits[:, :-1].flatten(0, 1), b.clean[:, 1:].flatten()
                ).item()
            else:
                total += answer_loss(
                    grad_values(logits[pm.out_slice], "logit"), b, "avg_diff"
                ).item()
    return total / len(loader)


@pytest.mark.parametrize("objective", ["lm", "task"])
@pytest.mark.parametrize("which", [1, 2])  # block 0's attention (all heads), block 0's MLP
def test_fitted_constants_beat_the_mean_and_zero(pm, objective, which):
    loader = random_loader(seed=2, n=4, batch_size=2)
    module = pm.graph.src_modules[which]
    fitted = optimal_ablation_values(pm, loader, steps=60, lr=0.05, objective=objective,
                                     sources=[module.module_name])  # fmt: skip
    mean = optimal_ablation_values(pm, loader, steps=0)
    others = [i for i in range(len(pm.srcs)) if not module.src_lo <= i < module.src_hi]
    assert torch.equal(fitted[others], mean[others])  # only the chosen module moves
    zero = torch.zeros_like(mean)
    got = _loss(pm, loader, module, fitted, objective)
    assert got < _loss(pm, loader, module, mean, objective) - 1e-3
    assert got < _loss(pm, loader, module, zero, objective)


def test_bad_arguments_are_named(pm):
    loader = random_loader(seed=3, n=2, batch_size=2)
    with pytest.raises(ValueError, match="objective must be"):
        optimal_ablation_values(pm, loader, objective="kl")
    with pytest.raises(ValueError, match="lr must be positive"):
        optimal_ablation_values(pm, loader, lr=0.0)
    with pytest.raises(ValueError, match="sources must name"):
        optimal_ablation_values(pm, loader, sources=["mlp"])


def test_fixed_ablation_values_score_and_evaluate_like_the_ablation_they_equal(pm):
    """``ablation_values`` equal to the clean token-wise mean give the very scores (EAP
    and IG) and circuit outputs of ``ablation_type="tokenwise_mean_clean"``; with optimal
    values the empty circuit is the model patched with them everywhere."""
    from edgewise import mask_gradient_prune_scores, run_circuits

    loader = random_loader(seed=2, n=4, batch_size=2)
    mean = src_ablations(pm, loader, AblationType.TOKENWISE_MEAN_CLEAN)
    for kw in ({"mask_val": 0.0}, {"integrated_grad_samples": 3}):
        want = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", progress=False,
                                          ablation_type="tokenwise_mean_clean", **kw)  # fmt: skip
        got = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", progress=False,
                                         ablation_values=mean, **kw)  # fmt: skip
        for n in want:
            assert torch.equal(got[n], want[n]), n
    sizes = [0, 5, pm.n_edges]
    a = run_circuits(pm, loader, sizes, want, ablation_type="tokenwise_mean_clean", progress=False)
    b = run_circuits(pm, loader, sizes, want, ablation_values=mean, progress=False)
    assert a.keys() == b.keys()
    for size in a:
        for key in a[size]:
            assert torch.equal(a[size][key], b[size][key])
    oa = optimal_ablation_values(pm, loader, steps=3)
    empty = run_circuits(pm, loader, [0], want, ablation_values=oa, progress=False)[0]
    for batch in loader:
        direct = pm.run_patched(batch.clean, pm.new_masks(1.0), oa)[pm.out_slice]
        torch.testing.assert_close(empty[batch.key], direct, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="pass one of them"):
        run_circuits(pm, loader, [0], want, ablation_values=oa, ablation_type="zero", progress=False)
    with pytest.raises(ValueError, match=r"ablation_values must be a tensor \[n_srcs="):
        mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", mask_val=0.0,
                                   ablation_values=oa[:, :, :, :3], progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="TREE_PATCH"):
        run_circuits(pm, loader, [0], want, patch_type="edge", ablation_values=oa, progress=False)


def _oa(pm, loader):
    """Optimal ablation values a few steps from the mean, so they differ from it."""
    return optimal_ablation_values(pm, loader, steps=3, lr=0.05)


def test_optimal_values_through_eap_and_node_eap_equal_the_hook_reference(pm):
    """EAP and node-level EAP with ``ablation_values``: each edge's score is the
    gradient at its destination times (optimal constant - clean output), computed with
    plain hooks; a node's score is the sum over its outgoing edges."""
    from edgewise import mask_gradient_prune_scores
    from edgewise.prune_algos.node_attribution import flat_node_scores, node_attribution_scores

    from reference import reference_eap_scores

    loader = random_loader(seed=4, n=4, batch_size=2)
    oa = _oa(pm, loader)
    want = reference_eap_scores(pm, loader, fixed=oa)
    got = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", mask_val=0.0,
                                     ablation_values=oa, progress=False)  # fmt: skip
    scale = max(float(v.abs().max()) for v in want.values())
    for n in want:
        torch.testing.assert_close(got[n].double(), want[n], atol=1e-9 * scale, rtol=0)
    # the sum over a node's outgoing edges: the sum scale, the gradient at the MLP's output
    nodes = flat_node_scores(pm, node_attribution_scores(pm, loader, "eap", "node",
                                                         ablation_values=oa, scale="sum",
                                                         mlp_gradient="output", progress=False))
    per_src = torch.zeros(len(pm.srcs), dtype=torch.float64)
    for e in pm.edges:
        per_src[e.src.src_idx] += want[e.dest.module_name][e.patch_idx]
    torch.testing.assert_close(nodes.double(), per_src, atol=1e-9 * scale, rtol=0)
    # node-level EAP-IG on activations takes the values too: a node's score is the sum of
    # its outgoing edges' scores of the edge-level method with the same values and passes
    from edgewise.prune_algos import eap_ig_activations_prune_scores

    edges = eap_ig_activations_prune_scores(pm, loader, integrated_grad_samples=2,
                                            ablation_values=oa, scale="sum", progress=False)
    per_src_ig = torch.zeros(len(pm.srcs), dtype=torch.float64)
    for e in pm.edges:
        per_src_ig[e.src.src_idx] += edges[e.dest.module_name][e.patch_idx].double()
    ig = flat_node_scores(pm, node_attribution_scores(
        pm, loader, "eap-ig-activations", "node", integrated_grad_samples=2, ablation_values=oa,
        scale="sum", mlp_gradient="output", progress=False))  # fmt: skip
    assert not torch.allclose(ig.double(), per_src)  # the values move the path: not EAP
    torch.testing.assert_close(ig.double(), per_src_ig, atol=1e-9 * scale, rtol=0)
    with pytest.raises(ValueError, match="EAP-IG on inputs .*MIB refuses"):
        node_attribution_scores(pm, loader, "eap-ig-inputs", ablation_values=oa)


@pytest.mark.parametrize("m", [1, 3])
def test_optimal_values_through_eap_ig_activations_follow_the_hooked_path(pm, m):
    """EAP-IG on activations with ``ablation_values``, one module moved: its outgoing
    edges' scores sum to the mean of dL/dt along ``clean + t (optimal - clean)`` of the
    module's whole output, at t = 1 - k/m (a direct hooked run); with m = 1 they are EAP
    with the same values."""
    from edgewise import mask_gradient_prune_scores
    from edgewise.prune_algos import eap_ig_activations_prune_scores
    from edgewise.prune_algos.eap_ig_activations import module_output_hook

    loader = random_loader(seed=4, n=4, batch_size=2)
    oa = _oa(pm, loader)
    module = pm.graph.src_modules[1]  # block 0's attention: every head's constant
    got = eap_ig_activations_prune_scores(pm, loader, integrated_grad_samples=m, progress=False,
                                          sources=[module.module_name], ablation_values=oa,
                                          scale="sum")
    out_of = [e for e in pm.edges if module.src_lo <= e.src.src_idx < module.src_hi]
    total = sum(float(got[e.dest.module_name][e.patch_idx]) for e in out_of)
    want = 0.0
    for batch in loader:
        clean = pm.src_outs(batch.clean)[module.src_lo:module.src_hi].sum(0)
        step = (oa[module.src_lo:module.src_hi].sum(0) - clean).detach()
        for k in range(1, m + 1):
            t = torch.tensor(1.0 - k / m, dtype=torch.float64, requires_grad=True)

            def moved(_mod, _inp, out, t=t, step=step):
                return out.detach() + t * step

            with pm.hooks([(module_output_hook(module), moved)]):
                logits = pm(batch.clean)[pm.out_slice]
            loss = answer_loss(grad_values(logits, "logit"), batch, "avg_diff")
            want += float(torch.autograd.grad(loss, t)[0]) / m
    assert total == pytest.approx(want, rel=1e-9, abs=1e-12)
    if m == 1:
        eap = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", mask_val=0.0,
                                         ablation_values=oa, progress=False)  # fmt: skip
        for e in out_of:
            assert float(got[e.dest.module_name][e.patch_idx]) == pytest.approx(
                float(eap[e.dest.module_name][e.patch_idx]), rel=1e-9, abs=1e-12)
