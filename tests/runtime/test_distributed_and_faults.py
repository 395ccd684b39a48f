"""Groundwork for multi-process runs: data-parallel mask gradients, run_circuits and ACDC over
torch.distributed (gloo, 2 CPU processes) equal one process; a NaN names the batch and
the edge."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from edgewise import mask_gradient_prune_scores, patchable_model, run_circuits
from edgewise.models import random_model

from util import VOCAB, random_loader


def _setup():
    model = random_model(n_layers=2, d_vocab=VOCAB, dtype=torch.float64, seed=4)
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
        heads = out if out.ndim == 4 else out.unflatten(-1, (pm.wrapped_model.cfg.n_heads, -1))
        heads = heads.clone()  # bridges give [batch, seq, heads * d_head]
        heads[:, :, 2] = float("nan")
        return heads.reshape(out.shape)

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


# ----------------------------------------------------------------------------- ACDC
def _acdc_setup():
    model = random_model(n_layers=2, n_heads=2, d_vocab=VOCAB, dtype=torch.float64,
                                      seed=5)
    # 4 batches of 5 prompts: ACDC searches on the first, 3 prompts on rank 0 and 2 on rank 1
    return patchable_model(model), random_loader(seed=5, n=20, batch_size=5)


def _acdc_taus(pm, loader):
    """exps, bases giving taus 1e-3 .. 1e-1 of the loss with every edge ablated."""
    from edgewise.prune_algos.acdc import faithfulness_loss

    batch = next(iter(loader))
    with torch.no_grad():
        full = pm(batch.clean)[pm.out_slice]
        out = pm.run_patched(batch.clean, pm.new_masks(1.0), pm.src_outs(batch.corrupt))
    top = math.floor(math.log10(float(faithfulness_loss(out[pm.out_slice][None], full,
                                                        "kl_div")[0])))
    return [top - 3, top - 2], [1, 4]


_ACDC_RUNS = {  # name -> keyword arguments of acdc_prune_scores
    "fast": {},
    "fast-speculation-3": {"speculation": 3},
    "plain-mse": {"method": "plain", "faithfulness_target": "mse"},
}


def _acdc_worker(rank: int, world: int, init: str, out: str, exps, bases) -> None:
    from edgewise.prune_algos import acdc

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        pm, loader = _acdc_setup()
        for name, kw in _ACDC_RUNS.items():
            scores = acdc.acdc_prune_scores(pm, loader, None, exps, bases, progress=False, **kw)
            torch.save(scores, f"{out}.{name}.{rank}")
        # the combined loss of one circuit on this rank's share of the first batch
        batch = next(iter(loader))
        rows = slice(rank, None, world)
        clean, corrupt = batch.clean[rows], batch.corrupt[rows]
        with torch.no_grad():
            full = pm(clean)[pm.out_slice]
            circ = pm.run_patched(clean, pm.new_masks(1.0), pm.src_outs(corrupt))[pm.out_slice]
        losses = [acdc._StepLoss(full, t, world)(torch.stack([circ, full]))
                  for t in ("kl_div", "mse")]
        torch.save(losses, f"{out}.losses.{rank}")

        # checkpoints: rank 0 writes; keep a copy of the state after 3 destinations, then
        # resume from it on both ranks (rank 1 gets it from rank 0) and count forwards
        save = acdc._save_checkpoint

        def save_and_copy(path, state):
            save(path, state)
            if state["next_dest"] == 3:
                save(f"{out}.partial.pt", state)

        forwards = []
        outputs = acdc._FastEvaluator.outputs

        def counting(self, *args):
            forwards.append(1)
            return outputs(self, *args)

        acdc._save_checkpoint = save_and_copy if rank == 0 else None  # rank 1 never saves
        acdc._FastEvaluator.outputs = counting
        try:
            acdc.acdc_prune_scores(pm, loader, None, exps, bases, progress=False,
                                   checkpoint=f"{out}.ckpt.pt")
            n_full = len(forwards)
            acdc._save_checkpoint = save
            dist.barrier()  # the copy is on disk before rank 0 reads it
            forwards.clear()
            resumed = acdc.acdc_prune_scores(pm, loader, None, exps, bases, progress=False,
                                             checkpoint=f"{out}.partial.pt")
        finally:
            acdc._save_checkpoint = save
            acdc._FastEvaluator.outputs = outputs
        torch.save((resumed, len(forwards), n_full), f"{out}.resumed.{rank}")

        # test_mode: every step checked against run_circuits (itself data parallel)
        checked = acdc.acdc_prune_scores(pm, loader, None, exps[:1], bases[:1],
                                         test_mode=True, progress=False)
        torch.save(checked, f"{out}.checked.{rank}")
    finally:
        dist.destroy_process_group()


def _assert_same_scores(got, want):
    assert set(got) == set(want)
    for n in want:  # same decisions, so the very same taus
        assert torch.equal(got[n], want[n]), n


def test_acdc_on_two_gloo_processes_gives_the_single_process_scores(tmp_path):
    from edgewise.prune_algos.acdc import acdc_prune_scores, faithfulness_loss

    pm, loader = _acdc_setup()
    exps, bases = _acdc_taus(pm, loader)
    out = str(tmp_path / "acdc")
    mp.spawn(_acdc_worker, args=(2, f"file://{tmp_path / 'store'}", out, exps, bases), nprocs=2,
             join=True)

    for name, kw in _ACDC_RUNS.items():
        want = acdc_prune_scores(pm, loader, None, exps, bases, progress=False, **kw)
        values = torch.cat([s.flatten() for s in want.values()])
        assert len(values.unique()) >= 3, name  # decisions go both ways
        for rank in range(2):
            _assert_same_scores(torch.load(f"{out}.{name}.{rank}"), want)

    # the loss combined over the ranks is the single-process loss of the whole batch
    batch = next(iter(loader))
    with torch.no_grad():
        full = pm(batch.clean)[pm.out_slice]
        circ = pm.run_patched(batch.clean, pm.new_masks(1.0),
                              pm.src_outs(batch.corrupt))[pm.out_slice]
    for rank in range(2):
        for target, got in zip(("kl_div", "mse"), torch.load(f"{out}.losses.{rank}")):
            want = faithfulness_loss(torch.stack([circ, full]), full, target).tolist()
            assert want[0] > 0 and got[1] == 0
            assert got[0] == pytest.approx(want[0], rel=1e-12, abs=0)

    # resumed from the state after 3 destinations: the same scores, fewer forwards
    want = acdc_prune_scores(pm, loader, None, exps, bases, progress=False)
    resumed = [torch.load(f"{out}.resumed.{rank}") for rank in range(2)]
    for scores, _, _ in resumed:
        _assert_same_scores(scores, want)
    assert 0 < resumed[0][1] == resumed[1][1] < resumed[0][2] == resumed[1][2]
    checked = acdc_prune_scores(pm, loader, None, exps[:1], bases[:1], progress=False)
    for rank in range(2):
        _assert_same_scores(torch.load(f"{out}.checked.{rank}"), checked)
