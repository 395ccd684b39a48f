"""Node- and neuron-level circuits equal an independent hook run that replaces the
ablated nodes' outputs (or the ablated dimensions of them) with their patch."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgewise import patchable_model
from edgewise.evaluation.node_circuits import (
    mib_weighted_edge_count,
    node_circuit,
    node_circuit_patch,
    node_circuit_sizes,
    node_score_level,
    run_node_circuits,
)
from edgewise.models import random_bridge, random_model

from util import VOCAB, hooked_only, random_loader


def reference_node_ablated_logits(pm, tokens, ablated, patch):
    """Logits with every source output replaced by its patch where ``ablated`` (bool
    ``[n_srcs, d_model]``) is True: plain forward hooks at TransformerLens' own source
    hooks (``hook_result`` per head, ``hook_mlp_out``, the embeddings), no edges."""
    handles = []
    hd = pm.adapter

    def hook(mod):
        def fn(_m, _i, out):
            lo, hi = mod.src_lo, mod.src_hi
            new = patch[lo:hi].expand(hi - lo, *out.shape[:2], out.shape[-1]).to(out.dtype)
            where = ablated[lo:hi][:, None, None, :]  # [n, 1, 1, d]
            if mod.n_heads is None:
                return torch.where(where[0], new[0], out)
            return torch.where(where.permute(1, 2, 0, 3), new.permute(1, 2, 0, 3), out)

        return fn

    with hd.flags(**pm.graph_flags):
        try:
            for mod in pm.graph.src_modules:
                handles.append(hd.hook_point(mod.module_name).register_forward_hook(hook(mod)))
            return pm.wrapped_model(tokens)
        finally:
            for h in handles:
                h.remove()


def ablated_units(pm, circuit):
    d = int(pm.cfg.d_model)
    rows = []
    for m in pm.graph.src_modules:
        kept = circuit[m.module_name].cpu()
        rows.append(kept[:, None].expand(-1, d) if kept.dim() == 1 else kept)
    return ~torch.cat(rows)


def random_circuit(pm, gen, level, p=0.5):
    d = int(pm.cfg.d_model)
    return {
        m.module_name: torch.rand(((m.n_heads or 1),) + ((d,) if level == "neuron" else ()),
                                  generator=gen) < p
        for m in pm.graph.src_modules
    }  # fmt: skip


def tokens(gen, batch=3, seq=5):
    return torch.randint(3, VOCAB, (batch, seq), generator=gen)


def check_circuits_match_reference(pm, gen, level):
    clean, corrupt = tokens(gen), tokens(gen)
    patch = pm.src_outs(corrupt)
    circuits = [random_circuit(pm, gen, level) for _ in range(2)]
    outs = []
    for circuit in circuits:
        masks, dims = node_circuit_patch(pm, circuit)
        with torch.inference_mode():
            got = pm.run_patched(clean, masks, patch, src_dims=dims)
        want = reference_node_ablated_logits(pm, clean, ablated_units(pm, circuit), patch)
        torch.testing.assert_close(got, want, atol=1e-8, rtol=0)
        outs.append(got)
    # two circuits stacked in one pass: copy i runs circuit i
    pairs = [node_circuit_patch(pm, c) for c in circuits]
    masks = {n: torch.stack([m[n] for m, _ in pairs]) for n in pairs[0][0]}
    ones = torch.ones(len(pm.srcs), int(pm.cfg.d_model))
    dims = torch.stack([d if d is not None else ones for _, d in pairs])
    with torch.inference_mode():
        both = pm.run_patched(clean.repeat(2, 1), masks, patch, src_dims=dims)
    torch.testing.assert_close(both.view(2, *outs[0].shape), torch.stack(outs), atol=1e-8, rtol=0)


@hooked_only("HookedTransformerConfig's shapes (parallel blocks with grouped-query attention, "
             "1-4 heads, attention-only); bridges: test_circuits_match_reference_bridge")
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    n_layers=st.integers(1, 2),
    n_heads=st.sampled_from([1, 2, 4]),
    gqa=st.booleans(),
    attn_only=st.booleans(),
    parallel=st.booleans(),
    use_seq=st.booleans(),
    level=st.sampled_from(["node", "neuron"]),
    seed=st.integers(0, 2**16),
)
def test_circuits_match_reference_hooked(n_layers, n_heads, gqa, attn_only, parallel, use_seq,
                                         level, seed):  # fmt: skip
    n_kv = max(1, n_heads // 2) if gqa else None
    model = random_model(
        n_layers=n_layers, n_heads=n_heads, d_head=2, d_vocab=VOCAB, n_kv_heads=n_kv,
        attn_only=attn_only, parallel_attn_mlp=parallel and not attn_only,
        positional_embedding_type="rotary" if gqa else "standard", dtype=torch.float64, seed=seed,
    )  # fmt: skip
    pm = patchable_model(model, seq_len=5 if use_seq else None)
    check_circuits_match_reference(pm, torch.Generator().manual_seed(seed), level)


@pytest.mark.parametrize("arch,kv", [("gpt2", None), ("llama", 2)])
@pytest.mark.parametrize("level", ["node", "neuron"])
def test_circuits_match_reference_bridge(arch, kv, level):
    model = random_bridge(arch, n_layers=2, n_heads=4, d_head=4, d_vocab=VOCAB, n_kv_heads=kv,
                          dtype=torch.float64)  # fmt: skip
    check_circuits_match_reference(patchable_model(model), torch.Generator().manual_seed(5), level)


def small_model():
    try:
        return random_model(n_layers=2, n_heads=2, d_head=2, d_vocab=VOCAB, dtype=torch.float64)
    except Exception:  # TransformerLens 4.x: bridges only
        return random_bridge("gpt2", n_layers=2, n_heads=2, d_head=2, d_vocab=VOCAB,
                             dtype=torch.float64)  # fmt: skip


@pytest.mark.parametrize("level", ["node", "neuron"])
def test_run_node_circuits_ends_are_clean_and_corrupt_and_sizes_match_reference(level):
    pm = patchable_model(small_model())
    loader = random_loader(seed=3)
    gen = torch.Generator().manual_seed(4)
    d = int(pm.cfg.d_model)
    scores = {m.module_name: torch.randn(((m.n_heads or 1),) + ((d,) if level == "neuron" else ()),
                                         generator=gen, dtype=torch.float64)
              for m in pm.graph.src_modules}  # fmt: skip
    total = len(pm.srcs) * (d if level == "neuron" else 1)
    sizes = [0, 3, 0.5, total]
    outs = run_node_circuits(pm, loader, sizes, scores, progress=False)
    stacked = run_node_circuits(pm, loader, sizes, scores, circuits_per_pass=3, progress=False)
    assert sorted(outs) == sorted({0, 3, int(0.5 * total), total})
    for batch in loader:
        clean = pm(batch.clean)[pm.out_slice]
        corrupt = pm(batch.corrupt)[pm.out_slice]
        torch.testing.assert_close(outs[total][batch.key], clean, atol=1e-10, rtol=0)
        torch.testing.assert_close(outs[0][batch.key], corrupt, atol=1e-10, rtol=0)
        patch = pm.src_outs(batch.corrupt)
        for n in outs:
            kept = node_circuit(pm, scores, n)
            assert sum(int(k.sum()) for k in kept.values()) == n
            want = reference_node_ablated_logits(pm, batch.clean, ablated_units(pm, kept), patch)
            torch.testing.assert_close(outs[n][batch.key], want[pm.out_slice], atol=1e-8, rtol=0)
            torch.testing.assert_close(
                stacked[n][batch.key], outs[n][batch.key], atol=1e-10, rtol=0
            )


def test_zero_ablation_circuit_matches_reference():
    pm = patchable_model(small_model())
    loader = random_loader(seed=6)
    scores = {m.module_name: torch.arange(m.n_heads or 1, dtype=torch.float64) + m.src_lo
              for m in pm.graph.src_modules}  # fmt: skip
    outs = run_node_circuits(pm, loader, [2], scores, ablation_type="zero", progress=False)
    kept = node_circuit(pm, scores, 2)
    zero = torch.zeros(len(pm.srcs), 1, 1, int(pm.cfg.d_model), dtype=torch.float64)
    for batch in loader:
        want = reference_node_ablated_logits(pm, batch.clean, ablated_units(pm, kept), zero)
        torch.testing.assert_close(outs[2][batch.key], want[pm.out_slice], atol=1e-8, rtol=0)


def test_top_n_order_ties_and_sign():
    pm = patchable_model(
        small_model()
    )  # sources: Resid Start, A0.0, A0.1, MLP 0, A1.0, A1.1, MLP 1
    values = [0.5, -2.0, 1.0, 1.0, 0.0, 3.0, -1.0]
    scores = {
        m.module_name: torch.tensor(values[m.src_lo : m.src_hi]) for m in pm.graph.src_modules
    }

    def names(circuit):
        flat = torch.cat([circuit[m.module_name] for m in pm.graph.src_modules])
        return [pm.srcs[i].name for i in flat.nonzero().flatten().tolist()]

    assert node_score_level(pm, scores) == "node"
    assert names(node_circuit(pm, scores, 2)) == ["A0.0", "A1.1"]  # |3| and |-2|
    # |1.0| three times (A0.1, MLP 0, MLP 1): graph order breaks the tie
    assert names(node_circuit(pm, scores, 3)) == ["A0.0", "A0.1", "A1.1"]
    assert names(node_circuit(pm, scores, 3, absolute=False)) == ["A0.1", "MLP 0", "A1.1"]
    assert names(node_circuit(pm, scores, 0)) == []
    assert node_circuit_sizes(pm, "node", [0.5, 2, 0.0, 1.0]) == [0, 2, 3, 7]
    assert node_circuit_sizes(pm, "neuron", [0.001]) == [int(0.001 * 7 * int(pm.cfg.d_model))]


def test_mib_weighted_edge_count_by_hand():
    pm = patchable_model(small_model())
    d = int(pm.cfg.d_model)
    kept = {
        m.module_name: torch.zeros(m.n_heads or 1, dtype=torch.bool) for m in pm.graph.src_modules
    }
    kept["blocks.0.hook_resid_pre"][0] = True
    kept["blocks.1.attn.hook_result"][1] = True
    kept["blocks.0.hook_mlp_out"][0] = True
    # 3 kept nodes x (3 inputs of the head + 1 of the MLP + the logits)
    assert mib_weighted_edge_count(pm, kept) == 3 * 5
    neurons = {n: k[:, None].expand(-1, d).clone() for n, k in kept.items()}
    neurons["blocks.0.hook_mlp_out"][0, : d // 2] = False  # half the MLP's neurons
    assert mib_weighted_edge_count(pm, neurons) == pytest.approx(2.5 * 5)


def test_bad_inputs_name_the_problem():
    pm = patchable_model(small_model())
    scores = {m.module_name: torch.zeros(m.n_heads or 1) for m in pm.graph.src_modules}
    with pytest.raises(ValueError, match="no entry"):
        node_circuit(pm, {}, 1)
    bad = dict(scores, **{"blocks.0.hook_mlp_out": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"expected \[1\]"):
        node_circuit(pm, bad, 1)
    nan = dict(scores, **{"blocks.0.hook_mlp_out": torch.tensor([float("nan")])})
    with pytest.raises(ValueError, match="NaN"):
        node_circuit(pm, nan, 1)
    with pytest.raises(ValueError, match="more than the 7 nodes"):
        node_circuit(pm, scores, 8)
    with pytest.raises(TypeError, match="list of circuit sizes"):
        run_node_circuits(pm, random_loader(), 3, scores, progress=False)  # type: ignore[arg-type]
    masks = pm.new_masks(1.0)
    patch = pm.src_outs(torch.ones(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="src_dims must be"):
        pm.run_patched(torch.ones(1, 5, dtype=torch.long), masks, patch, src_dims=torch.ones(3, 3))
    grad_masks = pm.new_masks(1.0, requires_grad=True)
    with pytest.raises(ValueError, match="inference passes"):
        with pm.patch(grad_masks, patch, src_dims=torch.ones(len(pm.srcs), int(pm.cfg.d_model))):
            pass
