"""Bounded memory: source blocks and prompt slices give the same scores and circuit
outputs as one pass, buffers hold one block, a pass that runs out of memory is retried
smaller (and says so), and budgets that cannot work are refused clearly."""

from __future__ import annotations

import pytest
import torch

from edgewise import AblationType, mask_gradient_prune_scores, patchable_model, run_circuits
from edgewise.models import hooked_transformer_available, random_bridge, random_model
from edgewise.patching import PatchableModel, engine
from edgewise.runtime.memory import (
    Plan,
    narrowest_block,
    parse_memory,
    pass_bytes,
    plan_passes,
    smaller_plan,
)

from util import VOCAB, random_loader

MODELS = {
    "hooked": lambda: random_model(n_layers=3, d_vocab=VOCAB, dtype=torch.float64),
    "hooked-gqa-parallel": lambda: random_model(
        n_layers=2, d_vocab=VOCAB, n_kv_heads=2, positional_embedding_type="rotary",
        parallel_attn_mlp=True, dtype=torch.float64)
    if hooked_transformer_available()  # no bridge architecture has both: parallel NeoX instead
    else random_model(n_layers=2, d_vocab=VOCAB, parallel_attn_mlp=True, dtype=torch.float64),
    "bridge-gpt2": lambda: random_bridge("gpt2", d_vocab=VOCAB, dtype=torch.float64),
}  # fmt: skip
SEQ = 5


def assert_same(got, want, rel=1e-10):
    scale = max(float(v.abs().max()) for v in want.values())
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=rel * scale, rtol=0)


def one_prompt_all_sources(pm: PatchableModel) -> int:
    return pass_bytes(pm, 1, SEQ, len(pm.srcs))


def block_budget(pm: PatchableModel) -> int:
    """Room for one prompt with one source module and one more source: blocks needed."""
    return pass_bytes(pm, 1, SEQ, narrowest_block(pm) + 1)


@pytest.mark.parametrize(
    ("kind", "seq", "ablation"),
    [
        ("hooked", False, AblationType.RESAMPLE),
        ("hooked", True, AblationType.ZERO),
        ("hooked-gqa-parallel", False, AblationType.BATCH_TOKENWISE_MEAN),
        ("hooked-gqa-parallel", True, AblationType.RESAMPLE),
        ("bridge-gpt2", False, AblationType.ZERO),
        ("bridge-gpt2", True, AblationType.RESAMPLE),
        ("hooked", False, AblationType.TOKENWISE_MEAN_CLEAN_AND_CORRUPT),
    ],
)
def test_source_blocks_give_the_scores_of_one_pass(kind, seq, ablation, monkeypatch):
    pm = patchable_model(MODELS[kind](), seq_len=SEQ if seq else None)
    loader = random_loader(seed=3, seq=SEQ, seq_len_edges=seq)
    kw = dict(ablation_type=ablation, progress=False)
    want = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", mask_val=0.0, **kw)
    budget = block_budget(pm)  # not even one prompt with every source fits
    plan = plan_passes(pm, 3, SEQ, budget, blocks_ok=True)
    assert plan.chunk == 1 and len(plan.blocks) >= 3
    rows: list[int] = []  # sources held by each pass's differences and each src_outs
    real_begin, real_src_outs = engine._Pass.begin, PatchableModel.src_outs

    def begin(self, *args):
        real_begin(self, *args)
        rows.append(self.run.delta.shape[0])

    def src_outs(self, *args, **kwargs):
        out = real_src_outs(self, *args, **kwargs)
        rows.append(out.shape[0])
        return out

    monkeypatch.setattr(engine._Pass, "begin", begin)
    monkeypatch.setattr(PatchableModel, "src_outs", src_outs)
    got = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", mask_val=0.0,
                                     max_memory=budget, **kw)  # fmt: skip
    assert_same(got, want)
    # the patch buffers of a pass hold one block of sources, not all of them
    assert rows and plan.widest < len(pm.srcs) and max(rows) <= plan.widest


def test_src_block_gradients_sum_to_the_unblocked_ones():
    """The building block itself: one patched pass per block, each block's masks get the
    gradients of its sources' edges and every other mask gets 0."""
    pm = patchable_model(MODELS["hooked"]())
    batch = next(iter(random_loader(seed=4, seq=SEQ)))
    w = torch.randn(VOCAB, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def grads(block):
        masks = pm.new_masks(0.0, requires_grad=True, dtype=torch.float64)
        patch = pm.src_outs(batch.corrupt, block)
        with pm.patch(masks, patch, src_block=block):
            loss = (pm(batch.clean) * w).sum()
        got = torch.autograd.grad(loss, list(masks.values()), allow_unused=True)
        return {n: torch.zeros_like(masks[n]) if g is None else g for n, g in zip(masks, got)}

    want = grads(None)
    blocks = pm.src_blocks(5)
    assert len(blocks) > 2 and all(hi - lo <= 5 for lo, hi in blocks[1:])
    total = {n: torch.zeros_like(g) for n, g in want.items()}
    for lo, hi in blocks:
        part = grads((lo, hi))
        for n, m in pm.dest_modules.items():
            cols = torch.arange(m.src_lo, m.src_hi)
            outside = (cols < lo) | (cols >= hi)
            assert (part[n][..., outside] == 0).all()
            total[n] += part[n]
    assert_same(total, want)


def test_prompt_slices_give_the_integrated_gradients_of_one_pass():
    pm = patchable_model(MODELS["hooked"]())
    loader = random_loader(seed=5, n=8, seq=SEQ, batch_size=4)
    kw = dict(integrated_grad_samples=3, progress=False)
    want = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", **kw)
    budget = pass_bytes(pm, 1, SEQ, len(pm.srcs)) * 3 // 2  # one prompt per pass
    assert plan_passes(pm, 4, SEQ, budget, blocks_ok=False) == Plan(1, ((0, len(pm.srcs)),), budget)
    got = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", max_memory=budget, **kw)
    assert_same(got, want)
    with pytest.raises(MemoryError, match="every mask at 0"):
        mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff",
                                   max_memory=budget // 4, **kw)  # fmt: skip


def test_the_progress_line_reports_the_plan(capsys):
    pm = patchable_model(MODELS["hooked"]())
    loader = random_loader(seed=6, seq=SEQ)
    mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", mask_val=0.0,
                               max_memory=block_budget(pm))  # fmt: skip
    err = capsys.readouterr().err
    assert "source blocks of <=" in err and "1 prompts/pass" in err and "max_memory" in err


def _fail_above(monkeypatch, prompts: int | None = None, srcs: int | None = None):
    """Make src_outs run out of memory for more than ``prompts`` prompts or a block of
    more than ``srcs`` sources; return the list of calls that failed."""
    real = PatchableModel.src_outs
    failed = []

    def src_outs(self, tokens, src_block=None):
        lo, hi = src_block or (0, len(self.srcs))
        if (prompts is not None and tokens.shape[0] > prompts) or (srcs is not None and hi - lo > srcs):
            failed.append((tokens.shape[0], hi - lo))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, tokens, src_block)

    monkeypatch.setattr(PatchableModel, "src_outs", src_outs)
    return failed


def test_out_of_memory_retries_with_half_the_batch_and_says_so(monkeypatch):
    pm = patchable_model(MODELS["hooked"]())
    loader = random_loader(seed=7, n=8, seq=SEQ, batch_size=4)
    want = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", mask_val=0.0, progress=False)
    want_ig = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff",
                                         integrated_grad_samples=2, progress=False)  # fmt: skip
    circuits_want = run_circuits(pm, loader, [0, 10, 40], want, progress=False)
    failed = _fail_above(monkeypatch, prompts=1)
    with pytest.warns(UserWarning, match="out of memory in batch .* retrying it with 2 prompts/pass"):
        got = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", mask_val=0.0,
                                         progress=False)  # fmt: skip
    assert_same(got, want)
    assert [p for p, _ in failed] == [4, 2]  # halved twice in the first batch, then kept small
    with pytest.warns(UserWarning, match="out of memory"):
        got_ig = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff",
                                            integrated_grad_samples=2, progress=False)  # fmt: skip
    assert_same(got_ig, want_ig)
    with pytest.warns(UserWarning, match="out of memory in batch .* retrying it with 2"):
        circuits = run_circuits(pm, loader, [0, 10, 40], want, progress=False)
    assert circuits.keys() == circuits_want.keys()
    for size in circuits:
        for key in circuits[size]:
            torch.testing.assert_close(circuits[size][key], circuits_want[size][key], atol=1e-12, rtol=0)


def test_out_of_memory_at_one_prompt_narrows_the_source_blocks(monkeypatch):
    pm = patchable_model(MODELS["hooked"]())
    loader = random_loader(seed=8, seq=SEQ)
    want = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", mask_val=0.0, progress=False)
    _fail_above(monkeypatch, prompts=1, srcs=6)
    with pytest.warns(UserWarning, match="source blocks"):
        got = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", mask_val=0.0,
                                         progress=False)  # fmt: skip
    assert_same(got, want)
    # where nothing smaller is possible the error comes through
    monkeypatch.undo()
    _fail_above(monkeypatch, prompts=0)
    with pytest.raises(torch.OutOfMemoryError):
        mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff",
                                   integrated_grad_samples=2, progress=False)  # fmt: skip


def test_circuits_in_prompt_slices_equal_one_pass():
    pm = patchable_model(MODELS["hooked"]())
    loader = random_loader(seed=9, n=8, seq=SEQ, batch_size=4)
    scores = mask_gradient_prune_scores(pm, loader, None, "logit", "avg_diff", mask_val=0.0, progress=False)
    for ablation in (AblationType.RESAMPLE, AblationType.BATCH_ALL_TOK_MEAN):
        kw = dict(ablation_type=ablation, progress=False, circuits_per_pass=3)
        want = run_circuits(pm, loader, [0, 5, 20, 60], scores, **kw)
        got = run_circuits(pm, loader, [0, 5, 20, 60], scores,
                           max_memory=one_prompt_all_sources(pm) * 2, **kw)  # fmt: skip
        for size in want:
            for key in want[size]:
                torch.testing.assert_close(got[size][key], want[size][key], atol=1e-12, rtol=0)


def test_budgets_parse_and_bad_ones_are_refused():
    cpu = torch.device("cpu")
    assert parse_memory(None, cpu) is None
    assert parse_memory(1234, cpu) == 1234
    assert parse_memory("1.5GiB", cpu) == 3 * 2**29
    assert parse_memory("800 MB", cpu) == 800 * 10**6
    assert 0 < parse_memory("auto", cpu) < 2**50
    for bad in ("lots", "12 parsecs", -5):
        with pytest.raises(ValueError, match="max_memory"):
            parse_memory(bad, cpu)
    pm = patchable_model(MODELS["hooked"]())
    with pytest.raises(MemoryError, match="smallest source block"):
        plan_passes(pm, 2, SEQ, 1000, blocks_ok=True)
    with pytest.raises(ValueError, match="whole source modules"):
        pm.src_outs(torch.zeros(1, SEQ, dtype=torch.long), (0, 3))
    plan = plan_passes(pm, 1, SEQ, block_budget(pm), blocks_ok=True)
    narrower = smaller_plan(pm, plan, blocks_ok=True)
    assert narrower is not None and len(narrower.blocks) > len(plan.blocks)
    assert smaller_plan(pm, plan, blocks_ok=False) is None
