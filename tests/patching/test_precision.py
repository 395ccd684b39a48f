"""Half-precision models against the same weights in float64: patched logits, EAP and
integrated-gradient scores and circuit outputs stay within the tolerances documented in
docs/precision.md (measured by scripts/precision_tolerances.py); masks, mask gradients
and scores are float32."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgewise import mask_gradient_prune_scores, patchable_model, run_circuits
from edgewise.evaluation.circuits import flat_prune_scores
from edgewise.metrics.agreement import pearson, relative_error, spearman, top_overlap
from edgewise.metrics.agreement import relative_error as rel_err
from edgewise.models import random_bridge, random_model
from edgewise.patching import PatchableModel
from edgewise.types import PruneScores

from util import VOCAB, hooked_only, random_loader

HALF = [torch.bfloat16, torch.float16]


@dataclass(frozen=True)
class Tolerance:
    """The documented tolerances of one dtype (docs/precision.md)."""

    outputs: float  # max |x - x64| / max |x64| of patched logits and circuit outputs
    scores: float  # the same for EAP and integrated-gradient scores
    pearson: float  # correlation of the scores with float64's, at least
    spearman: float  # rank correlation, at least
    top: float  # fraction of float64's top 10% edges also in the top 10% (80+ edges)


TOLERANCE = {
    torch.bfloat16: Tolerance(outputs=0.05, scores=0.15, pearson=0.995, spearman=0.9, top=0.75),
    torch.float16: Tolerance(outputs=0.01, scores=0.03, pearson=0.999, spearman=0.9, top=0.75),
}


def assert_scores_within(got: torch.Tensor, want: torch.Tensor, tol: Tolerance) -> None:
    err = rel_err(got, want)
    assert err <= tol.scores, f"normalised error {err:.3g} > {tol.scores}"
    assert pearson(got, want) >= tol.pearson
    assert spearman(got, want) >= tol.spearman
    if want.numel() >= 80:  # a swap at the boundary is a large fraction of a smaller top 10%
        assert top_overlap(got, want) >= tol.top


def hooked(seed: int, dtype: torch.dtype, **shape: Any) -> Any:
    """A random HookedTransformer built in float64 and rounded once to ``dtype``."""
    shape = {"n_layers": 2, "n_heads": 4, "d_head": 4, **shape}
    m64 = random_model(d_vocab=VOCAB, dtype=torch.float64, seed=seed, **shape)
    if dtype == torch.float64:
        return m64
    model = random_model(d_vocab=VOCAB, dtype=dtype, seed=seed, **shape)
    model.load_state_dict(m64.state_dict())
    return model


MODELS: dict[str, Callable[[int, torch.dtype], Any]] = {
    "hooked-LN": hooked,
    "hooked-RMS-GQA-rotary": lambda seed, dtype: hooked(
        seed, dtype, n_kv_heads=2, normalization_type="RMS", positional_embedding_type="rotary"
    ),
    "bridge-gpt2": lambda seed, dtype: random_bridge("gpt2", d_vocab=VOCAB, dtype=dtype, seed=seed),
}


def patched_logits(pm: PatchableModel, seed: int) -> torch.Tensor:
    """Logits with every edge ablated with probability 1/2 (the same edges on every dtype)."""
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, VOCAB, (3, 5), generator=gen)
    corrupt = torch.randint(3, VOCAB, (3, 5), generator=gen)
    masks = {n: (torch.rand(m.mask_shape, generator=gen) < 0.5).float()
             for n, m in pm.dest_modules.items()}
    with torch.inference_mode():
        return pm.run_patched(clean, masks, pm.src_outs(corrupt)).clone()


def scores(pm: PatchableModel, loader: Any, **kwargs: Any) -> PruneScores:
    return mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", progress=False,
                                      **kwargs)


def circuit_outputs(pm: PatchableModel, loader: Any, prune_scores: PruneScores) -> torch.Tensor:
    outs = run_circuits(pm, loader, [0.1, 0.3, 0.6], prune_scores, progress=False)
    return torch.cat([o.flatten() for per in outs.values() for o in per.values()])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("kind", list(MODELS))
def test_half_precision_within_documented_tolerance_of_float64(kind, dtype, seed):
    """Patched logits, EAP scores, IG scores (5 samples) and circuit outputs of a bfloat16
    or float16 model are within the documented tolerance of the float64 model."""
    tol = TOLERANCE[dtype]
    pm64 = patchable_model(MODELS[kind](seed, torch.float64))
    pm = patchable_model(MODELS[kind](seed, dtype))
    assert next(pm.wrapped_model.parameters()).dtype == dtype
    loader = random_loader(seed=seed)

    got = patched_logits(pm, seed)
    assert got.dtype == dtype
    assert rel_err(got, patched_logits(pm64, seed)) <= tol.outputs

    eap64 = scores(pm64, loader, mask_val=0.0)
    ig64 = scores(pm64, loader, integrated_grad_samples=5)
    for kwargs, hi in (({"mask_val": 0.0}, eap64), ({"integrated_grad_samples": 5}, ig64)):
        lo = scores(pm, loader, **kwargs)
        assert {v.dtype for v in lo.values()} == {torch.float32}
        assert_scores_within(flat_prune_scores(lo, pm), flat_prune_scores(hi, pm64), tol)

    # the same circuits (from the float64 EAP scores) on both models
    got = circuit_outputs(pm, loader, eap64)
    assert rel_err(got, circuit_outputs(pm64, loader, eap64)) <= tol.outputs


@hooked_only("HookedTransformerConfig's norm types (LNPre, RMSPre, none), on which the "
             "documented tolerances were measured; bridges: "
             "test_half_precision_within_documented_tolerance_of_float64[bridge-gpt2]")
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    dtype=st.sampled_from(HALF),
    norm=st.sampled_from(["LN", "LNPre", "RMS", "RMSPre", None]),
    n_layers=st.integers(1, 3),
    n_heads=st.sampled_from([2, 4]),
    d_head=st.sampled_from([2, 4, 8]),
    parallel=st.booleans(),
    attn_only=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_half_precision_within_tolerance_over_shapes(dtype, norm, n_layers, n_heads, d_head,
                                                      parallel, attn_only, seed):
    """Every norm type, attention-only and parallel blocks, 1-3 layers: patched logits,
    EAP and IG (3 samples) scores."""
    tol = TOLERANCE[dtype]
    shape = {"n_layers": n_layers, "n_heads": n_heads, "d_head": d_head, "normalization_type": norm,
             "parallel_attn_mlp": parallel and not attn_only, "attn_only": attn_only}
    pm64 = patchable_model(hooked(seed, torch.float64, **shape))
    pm = patchable_model(hooked(seed, dtype, **shape))
    loader = random_loader(seed=seed)
    assert rel_err(patched_logits(pm, seed), patched_logits(pm64, seed)) <= tol.outputs
    for kwargs in ({"mask_val": 0.0}, {"integrated_grad_samples": 3}):
        lo, hi = scores(pm, loader, **kwargs), scores(pm64, loader, **kwargs)
        assert {v.dtype for v in lo.values()} == {torch.float32}
        assert_scores_within(flat_prune_scores(lo, pm), flat_prune_scores(hi, pm64), tol)


@contextmanager
def recording_masks(pm: PatchableModel, seen: list[torch.dtype]):
    """Record the dtype of every mask ``pm.patch`` is given."""
    original = pm.patch

    @contextmanager
    def patch(masks, *args, **kwargs):
        seen.extend(m.dtype for m in masks.values())
        with original(masks, *args, **kwargs) as model:
            yield model

    pm.patch = patch  # type: ignore[method-assign]
    try:
        yield
    finally:
        del pm.patch


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("kind", ["hooked-LN", "bridge-gpt2"])
def test_half_models_get_float32_masks_and_mask_gradients(kind, dtype):
    pm = patchable_model(MODELS[kind](0, dtype))
    loader = random_loader()
    seen: list[torch.dtype] = []
    with recording_masks(pm, seen):
        eap = scores(pm, loader, mask_val=0.0)
        scores(pm, loader, integrated_grad_samples=2)
        run_circuits(pm, loader, [5], eap, progress=False)
    assert seen and set(seen) == {torch.float32}
    # a mask's gradient has the mask's dtype: float32, whatever the model's
    batch = next(iter(loader))
    masks = pm.new_masks(0.3, requires_grad=True)
    with pm.patch(masks, pm.src_outs(batch.corrupt)):
        out = pm(batch.clean)
    grads = torch.autograd.grad(out.float().sum(), list(masks.values()))
    assert all(g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in grads)


def _overflow(model: Any) -> None:
    with torch.no_grad():
        model.embed.W_E.fill_(6e4)
        model.pos_embed.W_pos.fill_(6e4)  # 1.2e5 > float16's largest, 65504


def test_float16_overflow_is_reported_not_scored():
    """A float16 residual stream that overflows raises, naming the first source with inf,
    instead of returning NaN scores."""
    model = hooked(0, torch.float16)
    pm = patchable_model(model)
    _overflow(model)
    with pytest.raises(FloatingPointError, match="Resid Start.*float16"):
        scores(pm, random_loader(), mask_val=0.0)


def test_patchable_model_accepts_a_float16_model_that_overflows():
    """Wrapping a model that already overflows works; scoring it then says where."""
    model = hooked(0, torch.float16)
    _overflow(model)
    pm = patchable_model(model)
    with pytest.raises(FloatingPointError, match="Resid Start.*float16"):
        scores(pm, random_loader(), mask_val=0.0)


def test_agreement_measures_on_known_cases():
    a = torch.tensor([3.0, -1.0, 0.5, 2.0, -4.0])
    assert relative_error(a, a) == 0.0 and pearson(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0) and spearman(a, a**3) == pytest.approx(1.0)
    assert relative_error(a * 1.1, a) == pytest.approx(0.1)
    assert top_overlap(a, a, frac=0.4) == 1.0  # |score| ranks -4 and 3 first
    assert top_overlap(torch.tensor([0.0, 9, 8, 0, 0]), a, frac=0.4) == 0.0
    assert top_overlap(torch.tensor([0.0, 0, 0, 9, 8]), a, frac=0.4) == 0.5
