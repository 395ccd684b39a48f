"""acdc_prune_scores: the fast path (partial forwards, speculation, taus sharing search
states) gives exactly the scores of a plain sequential ACDC written here independently
(one full forward per tested edge through the reference patcher); test_mode catches a
broken fast path; a planted path survives; checkpoints resume to identical scores."""

from __future__ import annotations

import math

import pytest
import torch

from edgewise import patchable_model
from edgewise.models import random_bridge, random_model
from edgewise.prune_algos import acdc
from edgewise.prune_algos.acdc import acdc_prune_scores

from reference import reference_patched_logits
from util import VOCAB, planted_model, random_loader, requires_hooked

F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is faster, and steadier on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- reference
def reference_order(pm):
    """Destinations output -> input; per destination positions last -> first, then
    sources last -> first."""
    order = []
    for d in reversed(pm.dests):
        edges = [e for e in pm.edges if e.dest == d]
        edges.sort(key=lambda e: (e.seq_idx or 0, e.src.src_idx), reverse=True)
        order += edges
    return order


def reference_loss(out, full, target):
    out, full = out.double(), full.double()
    if target == "mse":
        return ((out - full) ** 2).mean().item()
    p = full.softmax(-1)
    return (p * (p.log() - out.log_softmax(-1))).sum(-1).mean().item()


def reference_acdc(pm, loader, taus, target):
    """Plain sequential ACDC, one full reference forward per tested edge, per tau."""
    batch = next(iter(loader))
    patch = pm.src_outs(batch.corrupt)
    with torch.no_grad():
        full = pm(batch.clean)[pm.out_slice]
    scores = {n: torch.full(m.mask_shape, math.inf) for n, m in pm.dest_modules.items()}
    order = reference_order(pm)
    for tau in taus:
        masks = {n: torch.zeros(m.mask_shape, dtype=F64) for n, m in pm.dest_modules.items()}
        prev = 0.0
        for e in order:
            masks[e.dest.module_name][e.patch_idx] = 1.0
            with torch.no_grad():
                out = reference_patched_logits(pm, batch.clean, masks, patch)[pm.out_slice]
            loss = reference_loss(out, full, target)
            if loss - prev < tau:
                prev = loss
            else:
                masks[e.dest.module_name][e.patch_idx] = 0.0
        for n, m in masks.items():
            scores[n][m == 1] = torch.clamp(scores[n][m == 1], max=tau)
    return {n: s.float() for n, s in scores.items()}


def taus_for(pm, loader, target):
    """Integer exps/bases giving taus around 1e-3 .. 1e-1 of the loss with every edge
    ablated, so decisions go both ways."""
    batch = next(iter(loader))
    patch = pm.src_outs(batch.corrupt)
    with torch.no_grad():
        full = pm(batch.clean)[pm.out_slice]
        out = pm.run_patched(batch.clean, pm.new_masks(1.0), patch)[pm.out_slice]
    top = math.floor(math.log10(reference_loss(out, full, target)))
    exps, bases = [top - 3, top - 2], [1, 4]
    return exps, bases, sorted({float(b * 10.0**e) for e in exps for b in bases})


def record_passes(monkeypatch) -> list[int]:
    """The number of copies of every fast forward pass ACDC runs from now on."""
    from edgewise.prune_algos import acdc as acdc_module

    passes: list[int] = []
    original = acdc_module._FastEvaluator.outputs

    def counting(self, masks, module, cand):
        passes.append(cand.shape[0])
        return original(self, masks, module, cand)

    monkeypatch.setattr(acdc_module._FastEvaluator, "outputs", counting)
    return passes


def assert_same_scores(got, want):
    assert set(got) == set(want)
    for n in want:
        assert got[n].dtype == torch.float32 and got[n].shape == want[n].shape
        assert torch.equal(got[n], want[n]), n


def n_distinct(scores):
    return len(torch.unique(torch.cat([s.flatten() for s in scores.values()])))


MODELS = {
    "hooked-1L": (lambda: random_model(
        n_layers=1, n_heads=2, d_vocab=VOCAB, dtype=F64, seed=1), {}),
    "hooked-2L": (lambda: random_model(
        n_layers=2, n_heads=2, d_vocab=VOCAB, dtype=F64, seed=2), {}),
    "hooked-gqa-attn-only": (lambda: random_model(
        n_layers=2, n_heads=4, n_kv_heads=2, d_vocab=VOCAB, attn_only=True,
        positional_embedding_type="rotary", dtype=F64, seed=3), {}),
    "hooked-parallel-resid-graph": (lambda: random_model(
        n_layers=2, n_heads=2, d_vocab=VOCAB, parallel_attn_mlp=True, dtype=F64, seed=4),
        {"factorized": False}),
    "hooked-2L-outputs-after-first": (lambda: random_model(
        n_layers=2, n_heads=2, d_vocab=VOCAB, dtype=F64, seed=6), {"slice_output": "not_first_seq"}),
    "bridge-gpt2": (lambda: random_bridge("gpt2", n_layers=2, n_heads=2, d_vocab=VOCAB,
                                          dtype=F64, seed=5), {}),
    "bridge-llama-gqa": (lambda: random_bridge("llama", n_layers=1, n_heads=4, n_kv_heads=2,
                                               d_vocab=VOCAB, dtype=F64, seed=6), {}),
    "bridge-qwen2-gqa": (lambda: random_bridge("qwen2", n_layers=2, n_heads=4, n_kv_heads=2,
                                               d_vocab=VOCAB, dtype=F64, seed=7), {}),
}


@pytest.mark.parametrize("kind,seq,target", [
    ("hooked-1L", True, "kl_div"),
    ("hooked-1L", True, "mse"),
    ("hooked-2L", False, "kl_div"),
    ("hooked-2L", False, "mse"),
    ("hooked-gqa-attn-only", False, "kl_div"),
    ("hooked-parallel-resid-graph", True, "mse"),
    ("hooked-2L-outputs-after-first", False, "kl_div"),
    ("bridge-gpt2", False, "kl_div"),
    ("bridge-gpt2", False, "mse"),
    ("bridge-llama-gqa", True, "kl_div"),
])
def test_fast_path_equals_plain_sequential_reference(kind, seq, target):
    make, kw = MODELS[kind]
    pm = patchable_model(make(), seq_len=4 if seq else None, **kw)
    loader = random_loader(seed=7, seq=4, seq_len_edges=seq)
    exps, bases, taus = taus_for(pm, loader, target)
    want = reference_acdc(pm, loader, taus, target)
    assert n_distinct(want) >= 3  # the taus split the edges: decisions go both ways
    got = acdc_prune_scores(pm, loader, None, exps, bases, target, progress=False, speculation=3)
    assert_same_scores(got, want)
    # every ablated edge got one of the taus, the rest +inf
    values = set(torch.cat([s.flatten() for s in got.values()]).tolist())
    assert values <= {float(torch.tensor(t, dtype=torch.float32)) for t in taus} | {math.inf}


@pytest.mark.parametrize("kind", [
    pytest.param("hooked-2L", marks=requires_hooked), "bridge-gpt2", "bridge-llama-gqa", "bridge-qwen2-gqa",
])  # fmt: skip
def test_passes_start_mid_model_and_skip_the_shared_prefix_on_both_kinds(kind):
    """Clean and corrupt prompts agree on their first 3 of 5 tokens: the evaluator skips
    them on every model kind (a bridge's attention gets the prefix's clean keys and
    values), and the search's scores equal the plain search's (full passes, no skip)."""
    pm = patchable_model(MODELS[kind][0]())
    loader = random_loader(seed=2)  # a seed whose taus split the edges on every kind here
    b = next(iter(loader))
    full = pm(b.clean)[pm.out_slice]
    ev = acdc._FastEvaluator(pm, b.clean, pm.src_outs(b.corrupt), full)
    assert ev.partial and ev.clean.skip == 3
    assert ev.positions == "2/5"
    # head results come from hook_z, so TransformerLens' use_attn_result stays off
    assert all(h.point.endswith("attn.hook_z") for h in pm.src_hooks if h.module.n_heads)
    assert not pm.wrapped_model.cfg.use_attn_result
    exps, bases, _ = taus_for(pm, loader, "kl_div")
    fast = acdc_prune_scores(pm, loader, None, exps, bases, progress=False)
    assert n_distinct(fast) >= 3
    assert_same_scores(fast, acdc_prune_scores(pm, loader, None, exps, bases, progress=False,
                                               method="plain"))  # fmt: skip


def test_speculation_and_plain_method_do_not_change_scores_and_runs_repeat():
    pm = patchable_model(MODELS["hooked-2L"][0](), seq_len=4)
    loader = random_loader(seed=8, seq=4, seq_len_edges=True)
    exps, bases, _ = taus_for(pm, loader, "kl_div")
    runs = [acdc_prune_scores(pm, loader, None, exps, bases, progress=False, speculation=s)
            for s in (1, 5, 64, 5, None)]
    runs.append(acdc_prune_scores(pm, loader, None, exps, bases, progress=False, method="plain"))
    assert n_distinct(runs[0]) >= 3
    for r in runs[1:]:
        assert_same_scores(r, runs[0])


def test_a_k_that_changes_from_pass_to_pass_does_not_change_scores(monkeypatch):
    """The measured speculation picks k again before every pass: any sequence of k gives
    the scores of the plain sequential search."""
    import random

    from edgewise.prune_algos import acdc as acdc_module

    pm = patchable_model(MODELS["hooked-2L"][0](), seq_len=4)
    loader = random_loader(seed=8, seq=4, seq_len_edges=True)
    exps, bases, _ = taus_for(pm, loader, "kl_div")
    plain = acdc_prune_scores(pm, loader, None, exps, bases, progress=False, method="plain")
    rng = random.Random(0)
    monkeypatch.setattr(acdc_module._Speculation, "k_for", lambda self, states: rng.randint(1, 9))
    assert_same_scores(acdc_prune_scores(pm, loader, None, exps, bases, progress=False), plain)


@pytest.mark.parametrize("kind", ["hooked-2L", "bridge-gpt2"])
def test_tau_groups_tested_in_one_pass_give_the_sequential_scores(monkeypatch, kind):
    """Once the taus' decisions split, the search states' next candidates share one
    forward pass; on and off (one state per pass) give the plain search's scores, on in
    fewer passes."""
    from edgewise.prune_algos import acdc as acdc_module

    pm = patchable_model(MODELS[kind][0](), seq_len=4)
    loader = random_loader(seed=8, seq=4, seq_len_edges=True)
    exps, bases, _ = taus_for(pm, loader, "kl_div")
    plain = acdc_prune_scores(pm, loader, None, exps, bases, progress=False, method="plain")
    passes = record_passes(monkeypatch)
    stacked = acdc_prune_scores(pm, loader, None, exps, bases, progress=False, speculation=1)
    n_stacked, widest = len(passes), max(passes)
    passes.clear()
    monkeypatch.setattr(acdc_module._FastEvaluator, "_max_copies", lambda self: 1)
    alone = acdc_prune_scores(pm, loader, None, exps, bases, progress=False, speculation=1)
    assert_same_scores(stacked, plain)
    assert_same_scores(alone, plain)
    assert n_distinct(plain) >= 3 and widest > 1  # the taus did split, and shared passes
    assert n_stacked < len(passes)


def test_measured_speculation_maximises_edges_decided_per_second():
    from edgewise.prune_algos.acdc import _Speculation

    times = {1: 1.0, 2: 1.1, 4: 1.3, 8: 2.4, 16: 5.0}
    spec = _Speculation(None, times)
    # p = 0.8: edges per pass (1 - p^k) / (1 - p) = 1, 1.8, 2.95, 4.16, 4.86 -> per second best at k=4
    assert spec.k == 4
    for _ in range(400):  # every edge rejected outright: one candidate per pass is best
        spec.record(1, stopped=True)
    assert spec.k == 1
    for _ in range(400):  # none rejected: the k with the most copies per second
        spec.record(8, stopped=False)
    assert spec.k == 8 and spec.p > 0.99  # k / t(k): 1, 1.8, 3.1, 3.3, 3.2
    assert _Speculation(3, times).k == 3


def test_timing_of_wide_passes_stays_within_a_tenth_of_the_search(monkeypatch):
    """A pass of k copies costs 1 + k/2 s (fake clock). Widths 1, 2, 4, ... are timed
    while the next would keep the timing within a tenth of one pass per edge and tau;
    wider ones are taken at the widest timed one's cost per copy."""
    from edgewise.prune_algos.acdc import acdc_visit_order, search

    pm = patchable_model(random_model(n_layers=2, n_heads=2, d_vocab=VOCAB, seed=9))
    order = acdc_visit_order(pm)
    clock, widths = [0.0], []
    monkeypatch.setattr(search.time, "perf_counter", lambda: clock[0])

    class Evaluator:
        max_copies = 64

        def outputs(self, masks, module, cand):
            widths.append(cand.shape[0])
            clock[0] += 1 + cand.shape[0] / 2

    timed_counts = []
    for n_taus in (1, 10, 1000):
        clock[0], widths[:] = 0.0, []
        times = search._time_copies(Evaluator(), pm, order, torch.float32, torch.device("cpu"), n_taus)
        timed = sorted(set(widths))
        assert timed == [1, 2, 4, 8, 16, 32][: len(timed)]  # doubling from 1
        for k in timed:  # 3 destinations, each the best of its passes
            assert times[k] == 3 * (1 + k / 2)
        widest = timed[-1]
        assert sorted(times) == [1, 2, 4, 8, 16, 32]
        for k in (w for w in times if w > widest):
            assert times[k] == pytest.approx(times[widest] * k / widest)
        budget = 0.1 * pm.n_edges * n_taus * times[1] / 3
        assert clock[0] <= budget or timed == [1]  # k = 1 is always timed
        if widest < 32:  # the next width would have gone past the budget
            assert clock[0] + 4 * times[widest] > budget
        timed_counts.append(len(timed))
    assert timed_counts[0] < timed_counts[1] < timed_counts[2] == 6


def test_float32_model_matches_plain_method():
    pm = patchable_model(random_model(n_layers=2, n_heads=2, d_vocab=VOCAB, seed=9))
    loader = random_loader(seed=9)
    exps, bases, _ = taus_for(pm, loader, "kl_div")
    fast = acdc_prune_scores(pm, loader, None, exps, bases, progress=False)
    plain = acdc_prune_scores(pm, loader, None, exps, bases, progress=False, method="plain")
    assert_same_scores(fast, plain)


# ----------------------------------------------------------------------------- test mode
def test_test_mode_passes_and_catches_a_broken_fast_path(monkeypatch):
    pm = patchable_model(MODELS["hooked-2L"][0]())
    loader = random_loader(seed=10)
    exps, bases, _ = taus_for(pm, loader, "kl_div")
    calls = []

    def ref(*args, **kwargs):
        from edgewise.evaluation.circuits import run_circuits

        calls.append(args[2])
        return run_circuits(*args, **kwargs)

    normal = acdc_prune_scores(pm, loader, None, exps[:1], bases[:1], progress=False)
    checked = acdc_prune_scores(pm, loader, None, exps[:1], bases[:1], test_mode=True,
                                run_circuits_ref=ref, progress=False)
    assert_same_scores(checked, normal)
    assert len(calls) == pm.n_edges  # one check per tested edge (one tau)

    original = acdc._FastEvaluator.outputs

    def forgets_the_tested_edge(self, masks, module, cand):
        cand = cand.clone()
        cand[-1] = masks[module]  # the last copy silently drops its candidates
        return original(self, masks, module, cand)

    monkeypatch.setattr(acdc._FastEvaluator, "outputs", forgets_the_tested_edge)
    with pytest.raises(AssertionError, match="test_mode: the fast path disagrees"):
        acdc_prune_scores(pm, loader, None, exps[:1], bases[:1], test_mode=True, progress=False)


def test_show_graphs_needs_a_drawing_function_and_draws_each_circuit():
    pm = patchable_model(MODELS["hooked-1L"][0]())
    loader = random_loader(seed=11)
    with pytest.raises(ValueError, match="draw_seq_graph_ref"):
        acdc_prune_scores(pm, loader, None, [-2], [1], show_graphs=True, progress=False)
    drawn = []
    scores = acdc_prune_scores(pm, loader, None, [-3, -2], [1], show_graphs=True, progress=False,
                               draw_seq_graph_ref=lambda m, s: drawn.append(s))
    assert len(drawn) == 2
    for circuit in drawn:  # each drawing marks a circuit: 1 kept, 0 pruned
        for n, s in circuit.items():
            assert set(s.unique().tolist()) <= {0.0, 1.0}
            assert torch.all((s == 0) <= (scores[n] < math.inf))


def test_argument_checks():
    pm = patchable_model(MODELS["hooked-1L"][0]())
    loader = random_loader()
    with pytest.raises(ValueError, match="faithfulness_target"):
        acdc_prune_scores(pm, loader, None, faithfulness_target="logit", progress=False)
    with pytest.raises(ValueError, match="speculation"):
        acdc_prune_scores(pm, loader, None, speculation=0, progress=False)
    with pytest.raises(ValueError, match="positive"):
        acdc_prune_scores(pm, loader, None, [-2], [0], progress=False)
    with pytest.raises(ValueError, match="non-empty"):
        acdc_prune_scores(pm, loader, None, [], [1], progress=False)


# ----------------------------------------------------------------------------- planted path
@pytest.mark.parametrize("target", ["kl_div", "mse"])
def test_planted_path_is_kept_and_everything_else_pruned(target):
    pm = patchable_model(planted_model())
    loader = random_loader(seed=13)
    scores = acdc_prune_scores(pm, loader, None, [-4, -3], [1, 5], target, progress=False)
    kept = {e.name for e in pm.edges if scores[e.dest.module_name][e.patch_idx] == math.inf}
    assert kept == {"Resid Start->A0.0.V", "A0.0->Resid End"}
    # the noise edges are pruned already at the smallest tau
    smallest = float(torch.tensor(1e-4, dtype=torch.float32))
    assert all(scores[e.dest.module_name][e.patch_idx] == smallest
               for e in pm.edges if e.name not in kept)


# ----------------------------------------------------------------------------- checkpoints
def test_interrupted_run_resumes_from_checkpoint_to_identical_scores(tmp_path, monkeypatch):
    pm = patchable_model(MODELS["hooked-2L"][0](), seq_len=4)
    loader = random_loader(seed=14, seq=4, seq_len_edges=True)
    exps, bases, _ = taus_for(pm, loader, "kl_div")
    want = acdc_prune_scores(pm, loader, None, exps, bases, progress=False)
    path = tmp_path / "acdc.pt"

    class Interrupt(Exception):
        pass

    saves = []
    original_save = acdc._save_checkpoint

    def save_then_die(p, state):
        original_save(p, state)
        saves.append(state["next_dest"])
        if len(saves) == 7:
            raise Interrupt

    monkeypatch.setattr(acdc, "_save_checkpoint", save_then_die)
    with pytest.raises(Interrupt):
        acdc_prune_scores(pm, loader, None, exps, bases, progress=False, checkpoint=path)
    monkeypatch.setattr(acdc, "_save_checkpoint", original_save)
    assert saves == list(range(1, 8))

    forwards = []
    original_outputs = acdc._FastEvaluator.outputs

    def counting(self, *args):
        forwards.append(1)
        return original_outputs(self, *args)

    monkeypatch.setattr(acdc._FastEvaluator, "outputs", counting)
    got = acdc_prune_scores(pm, loader, None, exps, bases, progress=False, checkpoint=path)
    assert_same_scores(got, want)
    resumed = len(forwards)
    forwards.clear()
    acdc_prune_scores(pm, loader, None, exps, bases, progress=False)
    assert 0 < resumed < len(forwards)  # it did resume, skipping the first destinations

    # a finished checkpoint returns the same scores without testing any edge
    forwards.clear()
    assert_same_scores(acdc_prune_scores(pm, loader, None, exps, bases, progress=False,
                                         checkpoint=path), want)
    assert not forwards
    # a checkpoint from other arguments is refused
    with pytest.raises(ValueError, match="other arguments"):
        acdc_prune_scores(pm, loader, None, exps, bases, "mse", progress=False, checkpoint=path)


def test_edges_where_patch_equals_clean_are_accepted_untested(monkeypatch):
    """Token positions before the first clean/corrupt difference change nothing when
    ablated (causal attention): ACDC accepts their edges without a forward pass, with the
    plain search's scores, and tests them when the model is not causal."""
    from edgewise.models.adapter import HookAdapter

    pm = patchable_model(MODELS["hooked-2L"][0](), seq_len=4)
    loader = random_loader(seed=8, seq=4, seq_len_edges=True)  # prompts differ at 2 and 3
    exps, bases, _ = taus_for(pm, loader, "kl_div")
    plain = acdc_prune_scores(pm, loader, None, exps, bases, progress=False, method="plain")
    tested = record_passes(monkeypatch)
    runs = {}
    for causal in (True, False):
        monkeypatch.setattr(HookAdapter, "is_causal", property(lambda self, c=causal: c))
        tested.clear()
        scores = acdc_prune_scores(pm, loader, None, exps, bases, progress=False, speculation=1)
        assert_same_scores(scores, plain)
        runs[causal] = len(tested)
    assert runs[True] < runs[False]
