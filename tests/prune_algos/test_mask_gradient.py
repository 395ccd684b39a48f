"""mask_gradient_prune_scores: EAP identity, IG completeness, every objective against
autograd through the independent reference patcher, and its argument checks."""

from __future__ import annotations

import itertools

import pytest
import torch

from edgewise import (
    AblationType,
    mask_gradient_prune_scores,
    patchable_model,
)
from edgewise.models import random_bridge, random_model
from edgewise.prune_algos.loss import answer_loss, grad_values
from edgewise.runtime.ablation import batch_src_ablations

from reference import reference_eap_scores, reference_patched_logits
from util import VOCAB, random_loader


def assert_scores_close(got, want, rel=1e-8):
    scale = max(v.abs().max().item() for v in want.values())
    for name in want:
        torch.testing.assert_close(got[name].double(), want[name].double(), atol=rel * scale + 1e-7, rtol=0)


MODELS = {
    "hooked": lambda: random_model(n_layers=2, d_vocab=VOCAB, dtype=torch.float64),
    "hooked-gqa-attn-only": lambda: random_model(
        n_layers=2, d_vocab=VOCAB, n_kv_heads=2, attn_only=True,
        positional_embedding_type="rotary", dtype=torch.float64),
    "bridge-gpt2": lambda: random_bridge("gpt2", d_vocab=VOCAB, dtype=torch.float64),
    "bridge-llama": lambda: random_bridge("llama", d_vocab=VOCAB, n_kv_heads=2, dtype=torch.float64),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("seq", [False, True])
def test_mask_val_zero_equals_edge_attribution_patching(kind, seq):
    pm = patchable_model(MODELS[kind](), seq_len=5 if seq else None)
    loader = random_loader(seed=1, seq_len_edges=seq)
    got = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", mask_val=0.0,
                                     progress=False)
    want = reference_eap_scores(pm, loader)
    assert_scores_close(got, want)
    assert all(v.dtype == torch.float64 for v in got.values())  # never narrower than the model


def _loss_at(pm, loader, value):
    """Mean over batches of the loss with every mask at ``value``."""
    patches = batch_src_ablations(pm, loader, AblationType.RESAMPLE, "corrupt")
    total = 0.0
    with torch.no_grad():
        for b in loader:
            logits = pm.run_patched(b.clean, pm.new_masks(value), patches[b.key])[pm.out_slice]
            total += answer_loss(grad_values(logits, "logit"), b, "avg_diff").item()
    return total / len(loader)


def test_integrated_gradients_completeness():
    """The summed IG scores are a Riemann sum over 0, 1/N, ..., 1 of d loss / d alpha
    along the path where every mask is alpha: they approach loss(1) - loss(0) like 1/N,
    and the trapezoid rule built from them (endpoints from mask_val=0 and 1) like 1/N^2."""
    pm = patchable_model(MODELS["hooked"]())
    loader = random_loader(seed=2)
    delta = _loss_at(pm, loader, 1.0) - _loss_at(pm, loader, 0.0)

    def total(**kw):
        scores = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", progress=False, **kw)
        return sum(v.double().sum().item() for v in scores.values()) / len(loader)

    ends = (total(mask_val=0.0) + total(mask_val=1.0)) / 2
    mean_errors, trapezoid_errors = [], []
    for n in (4, 8, 32):
        s = total(integrated_grad_samples=n)
        mean_errors.append(abs(s / (n + 1) - delta))
        trapezoid_errors.append(abs((s - ends) / n - delta))
    assert mean_errors[0] > mean_errors[1] > mean_errors[2]
    assert mean_errors[2] < 0.3 * mean_errors[0]  # 1/N: 5/33 = 0.15, plus higher orders
    assert trapezoid_errors[2] < 0.01 * abs(delta)
    assert trapezoid_errors[2] < 0.15 * trapezoid_errors[1]  # 1/N^2: 4x the steps, ~16x less error


def test_layer_mode_integrated_gradients_moves_one_layer_at_a_time():
    pm = patchable_model(MODELS["hooked"]())
    loader = random_loader(seed=3)
    n = 4
    scores = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff",
                                        integrated_grad_samples=n, integrated_grad_mode="layer",
                                        progress=False)
    # Independent: for the last layer (Resid End), moving only its mask from 0 to 1.
    name = "blocks.1.hook_resid_post"
    patches = batch_src_ablations(pm, loader, AblationType.RESAMPLE, "corrupt")
    want = torch.zeros(pm.dest_modules[name].mask_shape, dtype=torch.float64)
    for b in loader:
        for k in range(n + 1):
            masks = pm.new_masks(0.0, dtype=torch.float64)
            masks[name] = torch.full_like(masks[name], k / n).requires_grad_(True)
            logits = reference_patched_logits(pm, b.clean, masks, patches[b.key])[pm.out_slice]
            answer_loss(logits, b, "avg_diff").backward()
            want += masks[name].grad
    torch.testing.assert_close(scores[name].double(), want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("grad_function,answer_function", list(itertools.product(
    ["logit", "prob", "logprob", "logit_exp"], ["avg_diff", "avg_val", "mse"])))
def test_every_objective_matches_direct_autograd(grad_function, answer_function):
    pm = patchable_model(random_model(n_layers=1, d_vocab=VOCAB, dtype=torch.float64))
    loader = random_loader(seed=4, n_answers=[1, 2, 1, 3, 2, 1])
    if answer_function == "mse":  # real-valued answers shaped like the output
        for ds_batch in [loader.dataset]:
            g = torch.Generator().manual_seed(0)
            ds_batch.answers = [torch.rand(VOCAB, generator=g, dtype=torch.float64)
                                for _ in range(len(ds_batch))]
    mask_val = 0.3
    got = mask_gradient_prune_scores(pm, loader, None, grad_function, answer_function,
                                     mask_val=mask_val, progress=False)
    patches = batch_src_ablations(pm, loader, AblationType.RESAMPLE, "corrupt")
    want = {n: torch.zeros(m.mask_shape, dtype=torch.float64) for n, m in pm.dest_modules.items()}
    for b in loader:
        masks = pm.new_masks(mask_val, requires_grad=True, dtype=torch.float64)
        logits = reference_patched_logits(pm, b.clean, masks, patches[b.key])[pm.out_slice]
        if grad_function == "logit_exp":
            vals = torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True).detach()
        else:
            vals = {"logit": lambda x: x, "prob": lambda x: x.softmax(-1),
                    "logprob": lambda x: x.log_softmax(-1)}[grad_function](logits)
        if answer_function == "mse":
            loss = ((vals - b.answers) ** 2).mean()
        else:
            ans = torch.stack([vals[i, a].mean() for i, a in enumerate(b.answers)])
            wrong = torch.stack([vals[i, a].mean() for i, a in enumerate(b.wrong_answers)])
            loss = -(ans - wrong).mean() if answer_function == "avg_diff" else -ans.mean()
        loss.backward()
        for n in want:
            want[n] += masks[n].grad
    assert_scores_close(got, want, rel=1e-6)


@pytest.mark.parametrize("ablation", list(AblationType))
@pytest.mark.parametrize("clean_corrupt", ["clean", "corrupt"])
def test_every_ablation_type_and_clean_corrupt_match_reference(ablation, clean_corrupt):
    pm = patchable_model(MODELS["hooked"]())
    loader = random_loader(seed=5)
    got = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", mask_val=0.0,
                                     ablation_type=ablation, clean_corrupt=clean_corrupt,
                                     progress=False)
    want = reference_eap_scores(pm, loader, ablation_type=ablation, clean_corrupt=clean_corrupt)
    assert_scores_close(got, want)
    if ablation == AblationType.RESAMPLE and clean_corrupt == "clean":
        # patching the clean prompt with itself changes nothing: every score is 0
        assert max(v.abs().max().item() for v in got.values()) < 1e-10


def test_exclusive_parameters_are_checked():
    pm = patchable_model(MODELS["hooked"]())
    loader = random_loader()
    with pytest.raises(ValueError, match="exactly one of mask_val .* and integrated_grad_samples"):
        mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff")
    with pytest.raises(ValueError, match="exactly one of mask_val"):
        mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", mask_val=0.0,
                                   integrated_grad_samples=5)
    with pytest.raises(ValueError, match="grad_function"):
        mask_gradient_prune_scores(pm, loader, None, "nope", "avg_diff", mask_val=0.0)


def test_low_precision_model_accumulates_scores_in_float32():
    loader = random_loader(seed=6)
    scores = {}
    for dtype in (torch.float64, torch.bfloat16):
        model = random_model(n_layers=2, d_vocab=VOCAB, dtype=torch.float64, seed=3)
        pm = patchable_model(model.to(dtype))
        scores[dtype] = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff",
                                                   mask_val=0.0, progress=False)
    assert all(v.dtype == torch.float32 for v in scores[torch.bfloat16].values())
    lo = torch.cat([v.flatten() for v in scores[torch.bfloat16].values()]).double()
    hi = torch.cat([v.flatten() for v in scores[torch.float64].values()])
    assert torch.corrcoef(torch.stack([lo, hi]))[0, 1] > 0.99
    assert (lo - hi).abs().max() < 0.05 * hi.abs().max()
