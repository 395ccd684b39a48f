"""Tracr models: conversion to TransformerLens, prompt datasets and official circuits."""

from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip("tracr", reason="install edgewise[tracr]")

import jax.numpy as jnp  # noqa: E402

from edgewise import (  # noqa: E402
    AblationType,
    PatchType,
    flat_prune_scores,
    load_dataset_json,
    mask_gradient_prune_scores,
    patchable_model,
    run_circuits,
)
from edgewise.benchmarks.official.tracr import (  # noqa: E402
    tracr_official_edges,
    tracr_reverse_official_edges,
    tracr_xproportion_official_edges,
)
from edgewise.benchmarks.tracr_models import (  # noqa: E402
    TRACR_TASKS,
    compile_tracr,
    make_tracr_dataset,
    tracr_dataloaders,
)
from edgewise.prune_algos.loss import answer_loss  # noqa: E402

ABLATIONS = {"resample": AblationType.RESAMPLE, "zero": AblationType.ZERO}


@pytest.fixture(scope="module")
def compiled():
    """task -> (HookedTransformer, TracrInfo); tracr compiles each program once."""
    return {task: compile_tracr(task) for task in TRACR_TASKS}


def dataset_tokens(task: str) -> torch.Tensor:
    """Every distinct clean and corrupt prompt of the shipped dataset, ``[n, 6]``."""
    prompts = load_dataset_json(f"tracr_{task}")["prompts"]
    rows = {tuple(p[k]) for p in prompts for k in ("clean", "corrupt")}
    return torch.tensor(sorted(rows))


def test_missing_tracr_says_how_to_install(monkeypatch):
    from edgewise.benchmarks import tracr_models

    for name in ("tracr", "tracr.compiler", "tracr.rasp"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install edgewise\[tracr\]"):
        tracr_models._import_tracr()


@pytest.mark.parametrize("task", TRACR_TASKS)
def test_model_shape(compiled, task):
    model, info = compiled[task]
    cfg = model.cfg
    assert cfg.normalization_type is None and cfg.n_ctx == info.n_ctx == 6
    assert cfg.d_vocab == len(info.encoding) and info.decoding[info.bos_id] == "BOS"
    assert cfg.d_vocab_out == (3 if task == "reverse" else 1)
    assert info.categorical == (task == "reverse")
    assert (cfg.n_layers, cfg.n_heads) == ((4, 1) if task == "reverse" else (2, 1))
    assert compile_tracr(task)[0] is not model  # cached compilation, fresh model


@pytest.mark.parametrize("task", TRACR_TASKS)
def test_model_reproduces_tracr_on_every_dataset_input(compiled, task):
    model, info = compiled[task]
    tokens = dataset_tokens(task)
    with torch.no_grad():
        out = model(tokens)  # [n, 6, d_vocab_out]
    # tracr's forward pass (what .apply runs) on the whole batch at once
    ref = info.tracr_model.forward(info.tracr_model.params, jnp.asarray(tokens.numpy()))
    ref_out = torch.tensor(ref.unembedded_output.tolist())  # [n, 6]: argmax or value
    if info.categorical:
        assert torch.equal(out.argmax(-1)[:, 1:], ref_out[:, 1:].long())
    else:
        torch.testing.assert_close(out[:, 1:, 0], ref_out[:, 1:].float(), atol=1e-5, rtol=0)
    # .apply itself, with tracr's decoding, on a few inputs
    for row in tokens[:: max(1, len(tokens) // 6)]:
        values = [info.decoding[int(t)] for t in row]
        decoded = info.tracr_model.apply(values).decoded
        ours = info.decode_output(model(row[None]))[0]
        if info.categorical:
            assert ours[1:] == decoded[1:]
        else:
            assert ours[1:] == pytest.approx(decoded[1:], abs=1e-5)


@pytest.mark.parametrize("task", TRACR_TASKS)
def test_shipped_dataset_is_the_generated_one_and_answers_are_the_models(compiled, task):
    model, _ = compiled[task]
    assert make_tracr_dataset(task) == load_dataset_json(f"tracr_{task}")
    train, test = tracr_dataloaders(task, batch_size=16, train_test_size=(0.5, 0.5))
    n = 243 if task == "reverse" else 1024
    assert len(train.dataset) + len(test.dataset) == n
    for batch in [*train, *test]:
        assert batch.clean.shape == (16, 6) and batch.answers.shape == (16, 5, 1)
        assert bool((batch.clean != batch.corrupt).any(dim=1).all())
        with torch.no_grad():
            out = model(batch.clean)[:, 1:]
        if task == "reverse":
            assert torch.equal(out.argmax(-1, keepdim=True), batch.answers)
        else:
            torch.testing.assert_close(out, batch.answers, atol=1e-6, rtol=0)
            assert float(answer_loss(out, batch, "mse")) < 1e-10


def circuit_scores(pm, edges):
    scores = {name: torch.zeros(m.mask_shape) for name, m in pm.dest_modules.items()}
    for e in edges:
        scores[e.dest.module_name][e.patch_idx] = 1.0
    return scores


@pytest.mark.parametrize("seq_len", [None, 6])
@pytest.mark.parametrize("ablation", ["resample", "zero"])
@pytest.mark.parametrize("task", TRACR_TASKS)
def test_official_circuit_alone_reproduces_the_model(compiled, task, ablation, seq_len):
    model, _ = compiled[task]
    pm = patchable_model(model, slice_output="not_first_seq", seq_len=seq_len)
    _, test = tracr_dataloaders(task, batch_size=32, train_test_size=(0.5, 0.5),
                                return_seq_length=seq_len is not None)
    if task == "reverse":
        edges = tracr_reverse_official_edges(pm, ablation=ablation)
    else:
        edges = tracr_xproportion_official_edges(pm, ablation=ablation)
    names = {e.name for e in edges}
    assert len(names) == {("reverse", "resample"): 2, ("reverse", "zero"): 10,
                          ("xproportion", "resample"): 3, ("xproportion", "zero"): 5}[task, ablation]
    if seq_len is not None:
        positions = {e.seq_idx for e in edges}
        assert positions == (set(range(1, 6)) if ablation == "resample" else set(range(6)))
        assert len(edges) == len(names) * len(positions)

    scores = circuit_scores(pm, edges)
    sizes = [0, len(edges)]
    outs = run_circuits(pm, test, sizes, scores, patch_type=PatchType.TREE_PATCH,
                        ablation_type=ABLATIONS[ablation], progress=False)
    assert sorted(outs) == sizes
    broken = 0.0
    for batch in test:
        with torch.no_grad():
            full = pm(batch.clean)[pm.out_slice]
        circuit, empty = outs[len(edges)][batch.key], outs[0][batch.key]
        if task == "reverse":
            assert torch.equal(circuit.argmax(-1), full.argmax(-1))
            broken += float((empty.argmax(-1) != full.argmax(-1)).float().mean())
        else:
            assert float(((circuit - full) ** 2).mean()) < 1e-8
            broken += float(((empty - full) ** 2).mean())
    assert broken > 0  # ablating everything does change the output


def test_official_edges_reject_other_models(compiled):
    pm = patchable_model(compiled["xproportion"][0], slice_output="not_first_seq")
    with pytest.raises(ValueError, match="not the tracr 'reverse' model"):
        tracr_reverse_official_edges(pm)
    with pytest.raises(ValueError, match="no official tracr circuit"):
        tracr_official_edges(pm, "xproportion", "mean")  # type: ignore[arg-type]
    pm5 = patchable_model(compiled["xproportion"][0], slice_output="not_first_seq", seq_len=5)
    with pytest.raises(ValueError, match="seq_len=5"):
        tracr_xproportion_official_edges(pm5)


@pytest.mark.parametrize("task", TRACR_TASKS)
def test_integrated_gradients_rank_the_resample_circuit_first(compiled, task):
    model, _ = compiled[task]
    pm = patchable_model(model, slice_output="not_first_seq")
    train, _ = tracr_dataloaders(task, batch_size=32, train_test_size=(64, 32))
    answer_function = "avg_diff" if task == "reverse" else "mse"
    scores = mask_gradient_prune_scores(pm, train, None, "logit", answer_function,
                                        integrated_grad_samples=4, progress=False)
    official = tracr_official_edges(pm, task, "resample")
    flat = flat_prune_scores(scores, pm).abs()
    assert torch.isfinite(flat).all()
    ranked = sorted(pm.edges, key=lambda e: -abs(float(scores[e.dest.module_name][e.patch_idx])))
    assert set(ranked[: len(official)]) == official
    assert abs(float(scores[ranked[len(official)].dest.module_name][ranked[len(official)].patch_idx])) < 1e-6
