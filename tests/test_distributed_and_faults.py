"""Issue 7 groundwork: data-parallel mask gradients and run_circuits over
torch.distributed (gloo, 2 CPU processes) equal one process; a NaN names the batch and
the edge."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from edgewise import mask_gradient_prune_scores, patchable_model, run_circuits
from edgewise.models import random_hooked_transformer

from util import VOCAB, random_loader


def _setup():
    model = random_hooked_transformer(n_layers=2, d_vocab=VOCAB, dtype=torch.float64, seed=4)
    return patchable_model(model), random_loader(seed=4, n=9, batch_size=2)  # 5 batches


def _worker(rank: int, world: int, init: str, out: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        pm, loader = _setup()
        for mode, kw in (("eap", {"mask_val": 0.0}), ("ig", {"integrated_grad_samples": 3})):
            scores = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff",
                                                progress=False, **kw)
            torch.save(scores, f"{out}.{mode}.{rank}")
        outs = run_circuits(pm, loader, [0, 10, 50], scores, progress=False)
        torch.save(outs, f"{out}.circuits.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_give_the_single_process_scores(tmp_path):
    out = str(tmp_path / "scores")
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'store'}", out), nprocs=2, join=True)
    pm, loader = _setup()
    for mode, kw in (("eap", {"mask_val": 0.0}), ("ig", {"integrated_grad_samples": 3})):
        want = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", progress=False,
                                          **kw)
        for rank in range(2):  # every rank ends with the full scores
            got = torch.load(f"{out}.{mode}.{rank}")
            for n in want:
                torch.testing.assert_close(got[n], want[n], atol=1e-12, rtol=1e-12)
    # run_circuits: every rank ends with every batch's outputs, equal to one process's
    want_outs = run_circuits(pm, loader, [0, 10, 50], want, progress=False)
    for rank in range(2):
        got_outs = torch.load(f"{out}.circuits.{rank}")
        assert list(got_outs) == list(want_outs)
        for size in want_outs:
            assert list(got_outs[size]) == list(want_outs[size])
            for key in want_outs[size]:
                torch.testing.assert_close(got_outs[size][key], want_outs[size][key],
                                           atol=1e-10, rtol=0)


def test_a_nan_activation_names_the_batch_and_the_edge():
    pm, loader = _setup()

    def poison(_m, _i, out):  # NaN in one head's output at one batch
        out = out.clone()
        out[:, :, 2] = float("nan")
        return out

    handle = pm.adapter.hook_point("blocks.0.attn.hook_z").register_forward_hook(poison)
    try:
        with pytest.raises(FloatingPointError, match=r"batch \d+ .*source with NaN or inf output "
                                                     r"is A0\.2 \(edges A0\.2->"):
            mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", mask_val=0.0,
                                       progress=False)
    finally:
        handle.remove()


def test_a_non_finite_score_names_its_edge():
    from edgewise.prune_algos.mask_gradient import check_finite

    pm, _ = _setup()
    edge = pm.edge("A0.1->A1.3.K")
    scores = pm.new_masks(0.0)
    scores[edge.dest.module_name][edge.patch_idx] = float("inf")
    with pytest.raises(FloatingPointError, match=r"edge A0\.1->A1\.3\.K .* in batch 7"):
        check_finite(pm, scores, "batch 7")
