"""PatchableModel's one-pass patching equals an independent per-edge hook patcher."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgewise import GraphSpec, build_graph, patchable_model
from edgewise.models import random_bridge, random_model

from reference import reference_patched_logits
from util import hooked_case, hooked_only

torch.set_default_dtype(torch.float32)
VOCAB = 20


def random_binary_masks(pm, gen, p=0.5):
    return {n: (torch.rand(m.mask_shape, generator=gen) < p).float()
            for n, m in pm.dest_modules.items()}


def tokens(gen, batch=3, seq=5):
    return torch.randint(3, VOCAB, (batch, seq), generator=gen)


def test_gpt2_small_graph_from_config_alone():
    try:
        from transformer_lens import HookedTransformerConfig as Config
    except ImportError:  # TransformerLens 4.x
        from transformer_lens.config import TransformerBridgeConfig as Config
    cfg = Config(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072,
                                  n_ctx=1024, d_vocab=50257, act_fn="gelu_new")
    g = build_graph(GraphSpec.from_config(cfg))
    assert (len(g.srcs), len(g.dests), g.n_edges) == (157, 445, 32491)
    assert g.edges[0].name == "Resid Start->A0.0.Q"
    assert g.edges[-1].name == "MLP 11->Resid End"


def test_graph_order_is_deterministic_and_patch_idx_is_unique():
    spec = GraphSpec(n_layers=3, n_heads=4, n_kv_heads=2)
    a, b = build_graph(spec, seq_len=3), build_graph(spec, seq_len=3)
    assert a == b
    seen = {(e.dest.module_name, e.patch_idx) for e in a.edges}
    assert len(seen) == a.n_edges
    sizes = {m.module_name: torch.Size(m.mask_shape).numel() for m in a.dest_modules}
    assert sum(sizes.values()) == a.n_edges
    # K/V destinations exist per KV head
    assert sum(1 for d in a.dests if d.name.startswith("A0.") and d.name.endswith(".K")) == 2


@hooked_only("HookedTransformerConfig's shapes (LNPre/RMSPre norms, parallel blocks with "
             "grouped-query attention); bridges: test_random_binary_masks_match_reference_bridge, "
             "test_unfactorized_and_joint_qkv_bridges_match_reference")
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    n_layers=st.integers(1, 3),
    n_heads=st.sampled_from([1, 2, 4]),
    kv_div=st.sampled_from([1, 2]),
    attn_only=st.booleans(),
    parallel=st.booleans(),
    use_seq=st.booleans(),
    separate_qkv=st.booleans(),
    factorized=st.booleans(),
    norm=st.sampled_from(["LN", "LNPre", "RMS", "RMSPre", None]),
    seed=st.integers(0, 2**16),
)
def test_random_binary_masks_match_reference_hooked(
    n_layers, n_heads, kv_div, attn_only, parallel, use_seq, separate_qkv, factorized, norm, seed
):
    n_kv = max(1, n_heads // kv_div)
    if not separate_qkv:
        n_kv = None  # one input per head: grouped K/V cannot be split per head
    model = random_model(
        n_layers=n_layers, n_heads=n_heads, d_head=2, d_vocab=VOCAB, n_kv_heads=n_kv,
        attn_only=attn_only, parallel_attn_mlp=parallel and not attn_only,
        positional_embedding_type="rotary" if n_kv not in (None, n_heads) else "standard",
        normalization_type=norm, dtype=torch.float64, seed=seed,
    )
    gen = torch.Generator().manual_seed(seed)
    pm = patchable_model(model, factorized=factorized, separate_qkv=separate_qkv,
                         seq_len=5 if use_seq else None)
    clean, corrupt = tokens(gen), tokens(gen)
    patch = pm.src_outs(corrupt)
    masks = random_binary_masks(pm, gen)
    got = pm.run_patched(clean, masks, patch)
    want = reference_patched_logits(pm, clean, masks, patch)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch,kv", [("gpt2", None), ("neox", None), ("llama", 2)])
@pytest.mark.parametrize("use_seq", [False, True])
def test_random_binary_masks_match_reference_bridge(arch, kv, use_seq):
    model = random_bridge(arch, n_layers=2, n_heads=4, d_head=4, d_vocab=VOCAB, n_kv_heads=kv,
                          dtype=torch.float64)
    pm = patchable_model(model, seq_len=5 if use_seq else None)
    if kv:
        assert pm.dest_modules["blocks.0.hook_k_input"].mask_shape[-2] == kv
    gen = torch.Generator().manual_seed(1)
    clean, corrupt = tokens(gen), tokens(gen)
    patch = pm.src_outs(corrupt)
    for _ in range(2):
        masks = random_binary_masks(pm, gen)
        got = pm.run_patched(clean, masks, patch)
        want = reference_patched_logits(pm, clean, masks, patch)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("arch", "factorized", "separate_qkv"),
                         [("gpt2", False, True), ("neox", True, False)])  # fmt: skip
def test_unfactorized_and_joint_qkv_bridges_match_reference(arch, factorized, separate_qkv):
    """The graph options of the hooked property test on bridges: residual-stream edges
    only (``factorized=False``), and one ``hook_attn_in`` input per head for Q, K and V
    (``separate_qkv=False``) with parallel attention and MLP (GPT-NeoX)."""
    model = random_bridge(arch, n_layers=2, n_heads=2, d_head=2, d_vocab=VOCAB, dtype=torch.float64)
    pm = patchable_model(model, factorized=factorized, separate_qkv=separate_qkv, seq_len=5)
    gen = torch.Generator().manual_seed(7)
    clean, corrupt = tokens(gen), tokens(gen)
    patch = pm.src_outs(corrupt)
    masks = random_binary_masks(pm, gen)
    got = pm.run_patched(clean, masks, patch)
    torch.testing.assert_close(got, reference_patched_logits(pm, clean, masks, patch), atol=1e-6, rtol=0)
    assert (got - pm(clean)).abs().max() > 1e-6


MODEL_KINDS = {
    "hooked": lambda: random_model(n_layers=2, d_vocab=VOCAB, dtype=torch.float64),
    "hooked-gqa": lambda: random_model(
        n_layers=2, d_vocab=VOCAB, n_kv_heads=2, positional_embedding_type="rotary",
        dtype=torch.float64),
    "bridge-gpt2": lambda: random_bridge("gpt2", d_vocab=VOCAB, dtype=torch.float64),
    "bridge-llama": lambda: random_bridge("llama", d_vocab=VOCAB, n_kv_heads=2, dtype=torch.float64),
}


@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
def test_all_zero_is_unpatched_and_all_one_is_corrupt(kind):
    pm = patchable_model(MODEL_KINDS[kind]())
    gen = torch.Generator().manual_seed(2)
    clean, corrupt = tokens(gen), tokens(gen)
    patch = pm.src_outs(corrupt)
    torch.testing.assert_close(pm.run_patched(clean, pm.new_masks(0.0), patch), pm(clean),
                               atol=1e-10, rtol=0)
    torch.testing.assert_close(pm.run_patched(clean, pm.new_masks(1.0), patch), pm(corrupt),
                               atol=1e-10, rtol=0)


def test_token_position_edge_changes_nothing_before_its_position():
    pm = patchable_model(MODEL_KINDS["hooked"](), seq_len=6)
    gen = torch.Generator().manual_seed(3)
    clean, corrupt = tokens(gen, seq=6), tokens(gen, seq=6)
    patch = pm.src_outs(corrupt)
    base = pm(clean)
    for name in ["Resid Start->A1.0.K", "A0.1->MLP 1", "MLP 0->Resid End"]:
        for pos in (2, 4):
            edge = pm.edge(name, pos)
            masks = pm.masks_from_edges([edge])
            out = pm.run_patched(clean, masks, patch)
            torch.testing.assert_close(out[:, :pos], base[:, :pos], atol=1e-12, rtol=0)
            assert (out[:, pos:] - base[:, pos:]).abs().max() > 1e-6


def test_fractional_masks_and_gradients_match_autograd_of_reference():
    pm = patchable_model(MODEL_KINDS["hooked-gqa"](), seq_len=5)
    gen = torch.Generator().manual_seed(4)
    clean, corrupt = tokens(gen), tokens(gen)
    patch = pm.src_outs(corrupt)
    base = {n: torch.rand(m.mask_shape, generator=gen, dtype=torch.float64)
            for n, m in pm.dest_modules.items()}
    w = torch.randn(VOCAB, generator=gen, dtype=torch.float64)

    def grads(fn):
        masks = {n: v.clone().requires_grad_(True) for n, v in base.items()}
        out = fn(clean, masks, patch)
        (out * w).sum().backward()
        return out.detach(), {n: m.grad for n, m in masks.items()}

    got_out, got = grads(pm.run_patched)
    want_out, want = grads(lambda t, m, p: reference_patched_logits(pm, t, m, p))
    torch.testing.assert_close(got_out, want_out, atol=1e-8, rtol=0)
    for name in got:
        torch.testing.assert_close(got[name].double(), want[name], atol=1e-6, rtol=1e-6)


def test_patch_context_restores_model_after_exception():
    pm = patchable_model(MODEL_KINDS["hooked"]())
    gen = torch.Generator().manual_seed(5)
    clean, corrupt = tokens(gen), tokens(gen)
    before = pm(clean)
    n_hooks = sum(len(m._forward_hooks) for m in pm.wrapped_model.modules())
    with pytest.raises(RuntimeError, match="boom"):
        with pm.patch(pm.new_masks(1.0), pm.src_outs(corrupt)):
            assert not torch.allclose(pm(clean), before)
            raise RuntimeError("boom")
    assert sum(len(m._forward_hooks) for m in pm.wrapped_model.modules()) == n_hooks
    torch.testing.assert_close(pm(clean), before, atol=0, rtol=0)


def test_model_without_hooks_gets_a_clear_error():
    with pytest.raises(TypeError, match="no TransformerLens hook points"):
        patchable_model(torch.nn.Linear(3, 3))


@hooked_only("deletes an entry of HookedTransformer.hook_dict (a bridge's case: "
             "test_bridge_without_a_hook_point_gets_a_clear_error)")
def test_hooked_transformer_without_a_hook_point_gets_a_clear_error():
    model = random_model(n_layers=1, kind="hooked")
    del model.hook_dict["blocks.0.hook_mlp_out"]
    with pytest.raises(ValueError, match="lacks hook points.*blocks.0.hook_mlp_out"):
        patchable_model(model)


def test_bridge_without_a_hook_point_gets_a_clear_error(monkeypatch):
    """A bridge builds ``hook_dict`` anew on every access: the property is replaced by one
    without ``blocks.0.hook_mlp_out``."""
    model = random_bridge("gpt2", n_layers=1, n_heads=2, d_head=2, d_vocab=VOCAB)
    listed = type(model).hook_dict
    monkeypatch.setattr(type(model), "hook_dict", property(
        lambda self: {k: v for k, v in listed.__get__(self).items() if k != "blocks.0.hook_mlp_out"}))
    with pytest.raises(ValueError, match="^TransformerBridge lacks hook points.*blocks.0.hook_mlp_out"):
        patchable_model(model)


def test_bad_mask_shapes_and_patch_sizes_are_reported():
    pm = patchable_model(MODEL_KINDS["hooked"]())
    masks = pm.new_masks()
    masks["blocks.0.hook_mlp_in"] = torch.zeros(3)
    with pytest.raises(ValueError, match="blocks.0.hook_mlp_in has shape"):
        pm.run_patched(torch.zeros(1, 3, dtype=torch.long), masks, pm.src_outs(torch.zeros(1, 3, dtype=torch.long)))
    with pytest.raises(ValueError, match="sources"):
        pm.run_patched(torch.zeros(1, 3, dtype=torch.long), pm.new_masks(), torch.zeros(2, 1, 3, 16))


def test_stacked_masks_patch_each_copy_of_the_batch_by_its_own_circuit():
    pm = patchable_model(MODEL_KINDS["hooked-gqa"](), seq_len=5)
    gen = torch.Generator().manual_seed(6)
    clean, corrupt = tokens(gen), tokens(gen)
    patch = pm.src_outs(corrupt)
    circuits = [random_binary_masks(pm, gen) for _ in range(3)]
    stacked = {n: torch.stack([c[n] for c in circuits]).requires_grad_(True) for n in circuits[0]}
    out = pm.run_patched(clean.repeat(3, 1), stacked, patch).view(3, *clean.shape, VOCAB)
    w = torch.randn(VOCAB, dtype=torch.float64, generator=gen)
    (out * w).sum().backward()
    for i, masks in enumerate(circuits):
        masks = {n: m.double().requires_grad_(True) for n, m in masks.items()}
        want = reference_patched_logits(pm, clean, masks, patch)
        torch.testing.assert_close(out[i], want, atol=1e-8, rtol=0)
        (want * w).sum().backward()
        for n in masks:
            torch.testing.assert_close(stacked[n].grad[i].double(), masks[n].grad, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="repeat"):
        pm.run_patched(clean, {n: m[:2].detach() for n, m in stacked.items()}, patch)


@pytest.mark.parametrize("kind", [pytest.param("hooked", marks=hooked_case), "bridge"])
@pytest.mark.parametrize(("seq", "prefix", "rotary"),
                         [(False, 0, False), (True, 0, False), (False, 3, False), (True, 2, True)])  # fmt: skip
def test_a_pass_from_a_clean_start_equals_the_full_patched_pass(seq, prefix, rotary, kind):
    """One module's masks per copy, the others shared, every mask before the start block
    0: starting at that block from the clean run gives the full model's patched outputs
    (the reference patcher), also after a shared mask changes in place. Where clean and
    corrupt prompts share their first ``prefix`` tokens, passes compute only the
    positions after it (attending to the clean keys and values of the prefix)."""
    from edgewise.patching import engine

    model = random_model(n_layers=3, d_vocab=VOCAB, dtype=torch.float64, kind=kind,
                         **({"positional_embedding_type": "rotary", "n_kv_heads": 2} if rotary else {}))  # fmt: skip
    pm = patchable_model(model, seq_len=5 if seq else None)
    gen = torch.Generator().manual_seed(21)
    clean, corrupt = tokens(gen), tokens(gen)
    corrupt[:, :prefix] = clean[:, :prefix]
    patch = pm.src_outs(corrupt)
    with torch.inference_mode():
        full = pm(clean)[pm.out_slice]
    run = engine.clean_run(pm, clean, patch, full)
    assert run.partial and run.skip == prefix
    for start in range(3):
        masks = {n: m * float(pm.dest_modules[n].block >= start)
                 for n, m in random_binary_masks(pm, gen).items()}  # fmt: skip
        module = next(n for n, m in pm.dest_modules.items() if m.block == start)
        cand = torch.stack([random_binary_masks(pm, gen)[module] for _ in range(2)])
        for _ in range(2):  # the second time a shared mask has changed in place
            got = engine.patched_outputs(pm, clean.repeat(2, 1), {**masks, module: cand}, patch,
                                         clean=run, start=start).view(2, *full.shape)  # fmt: skip
            for j in range(2):
                want = reference_patched_logits(pm, clean, {**masks, module: cand[j]}, patch)
                torch.testing.assert_close(got[j], want[pm.out_slice], atol=1e-9, rtol=0)
            last = next(n for n in reversed(pm.dest_modules) if n != module)
            masks[last].fill_(1.0)
    early = {n: torch.ones(m.mask_shape, dtype=torch.float64) for n, m in pm.dest_modules.items()}
    with pytest.raises(ValueError, match="needs every mask before it at 0"):
        engine.patched_outputs(pm, clean, early, patch, clean=run, start=1)


def test_gradients_of_a_pass_survive_later_passes_before_backward():
    """Passes without gradients reuse one patch buffer; a pass with gradients keeps its
    own, so running others (with or without grad) before its backward changes nothing."""
    pm = patchable_model(MODEL_KINDS["hooked"]())
    gen = torch.Generator().manual_seed(8)
    clean, corrupt = tokens(gen), tokens(gen)
    patch = pm.src_outs(corrupt)
    w = torch.randn(VOCAB, dtype=torch.float64, generator=gen)

    def masks():
        return {n: torch.full(m.mask_shape, 0.4, dtype=torch.float64, requires_grad=True)
                for n, m in pm.dest_modules.items()}

    alone = masks()
    (pm.run_patched(clean, alone, patch) * w).sum().backward()
    first, second = masks(), masks()
    loss1 = (pm.run_patched(clean, first, patch) * w).sum()
    loss2 = (pm.run_patched(corrupt, second, patch) * w).sum()
    with torch.inference_mode():
        pm.run_patched(corrupt, pm.new_masks(1.0, dtype=torch.float64), patch)
    (loss1 + loss2).backward()
    for n in alone:
        torch.testing.assert_close(first[n].grad, alone[n].grad, atol=1e-10, rtol=0)


def test_inference_and_gradient_passes_alternate_on_the_reused_buffer():
    pm = patchable_model(MODEL_KINDS["hooked"]())
    gen = torch.Generator().manual_seed(9)
    clean, corrupt = tokens(gen), tokens(gen)
    patch = pm.src_outs(corrupt)
    masks = {n: torch.full(m.mask_shape, 0.5, dtype=torch.float64, requires_grad=True)
             for n, m in pm.dest_modules.items()}
    with torch.inference_mode():
        first = pm.run_patched(clean, masks, patch)
    second = pm.run_patched(clean, masks, patch)  # with gradients, on the same buffer
    second.sum().backward()
    torch.testing.assert_close(second.detach(), first, atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", ["hooked", "bridge-gpt2"])
def test_src_outs_writes_only_into_the_buffer_it_is_given(kind):
    pm = patchable_model(MODEL_KINDS[kind]())
    gen = torch.Generator().manual_seed(10)
    clean, corrupt = tokens(gen), tokens(gen)
    first = pm.src_outs(clean)
    kept = first.clone()
    second = pm.src_outs(corrupt)  # a result stays the caller's: never overwritten
    assert torch.equal(first, kept) and not torch.equal(second, kept)
    third = pm.src_outs(clean, out=second)  # unless handed back as out=
    assert third.data_ptr() == second.data_ptr() and torch.equal(third, kept)
    wrong = torch.empty(1)
    assert pm.src_outs(clean, out=wrong).data_ptr() != wrong.data_ptr()  # wrong shape: ignored


def test_buffer_cache_hands_a_buffer_to_one_taker_at_a_time():
    """Inference passes give their difference buffer back when the context ends; a pass
    with gradients never takes the cache's, so its graph can outlive the context."""
    pm = patchable_model(MODEL_KINDS["hooked"]())
    gen = torch.Generator().manual_seed(11)
    clean, corrupt = tokens(gen), tokens(gen)
    patch = pm.src_outs(corrupt)
    masks = pm.new_masks(0.5)
    pm.free_buffers()
    with torch.inference_mode(), pm.patch(masks, patch):
        pm(clean)
        assert len(pm.scratch) == 0  # taken by the pass
    assert len(pm.scratch) == 1  # given back
    taken = pm.scratch.take("delta", 1, pm.dtype, pm.device)
    assert len(pm.scratch) == 0 and pm.scratch.take("delta", 1, pm.dtype, pm.device) is not taken
    pm.scratch.give_back("delta", taken)
    grad_masks = pm.new_masks(0.5, requires_grad=True, dtype=pm.dtype)
    with pm.patch(grad_masks, patch):
        out = pm(clean)
    with torch.inference_mode():  # reuses the cache's buffer while the graph holds its own
        want = pm.run_patched(clean, masks, patch)
    torch.testing.assert_close(out.detach(), want, atol=1e-12, rtol=0)
    out.sum().backward()
    assert all(m.grad is not None and torch.isfinite(m.grad).all() for m in grad_masks.values())


def test_patchable_model_is_an_nn_module():
    """What a notebook does first: move it, change its dtype, look at its state. The patched
    forward after ``pm.double()`` is the float64 reference."""
    from util import random_loader

    pm = patchable_model(random_model(n_layers=2, n_heads=2, d_vocab=20, seed=4))
    batch = next(iter(random_loader(seed=3)))
    masks = pm.new_masks(0.5)
    pm.run_patched(batch.clean, masks, pm.src_outs(batch.corrupt))  # fills the reused buffers
    assert pm.to("cpu") is pm and pm.device == torch.device("cpu")
    assert pm.double() is pm
    assert all(p.dtype == torch.float64 for p in pm.parameters())
    assert all(m.dtype == torch.float64 for m in pm.patch_masks.values())
    masks = {n: m.double() for n, m in masks.items()}
    got = pm.run_patched(batch.clean, masks, pm.src_outs(batch.corrupt))
    want = reference_patched_logits(pm, batch.clean, masks, pm.src_outs(batch.corrupt))
    # (a HookedTransformer keeps cfg.dtype, and rounds attention patterns to it)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    state = pm.state_dict()
    pm.float().eval().requires_grad_(False)
    assert not pm.training and not any(p.requires_grad for p in pm.parameters())
    assert all(p.dtype == torch.float32 for p in pm.parameters())
    first = next(pm.parameters())
    want = first.detach().clone()
    first.data.add_(1.0)
    pm.load_state_dict(state)  # the saved values come back
    assert torch.equal(first, want)
    assert [n for n, _ in pm.named_buffers()] == [f"wrapped_model.{n}" for n, _ in pm.wrapped_model.named_buffers()]
    assert len(list(pm.buffers())) == len(list(pm.wrapped_model.buffers()))  # nn.Module's own
    assert pm.half() is pm and all(p.dtype == torch.float16 for p in pm.parameters())
    assert all(m.dtype == torch.float16 for m in pm.patch_masks.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_patchable_model_moves_to_cuda_and_back():
    from util import random_loader

    pm = patchable_model(random_model(n_layers=2, n_heads=2, d_vocab=20, seed=4))
    batch = next(iter(random_loader(seed=3)))
    masks = pm.new_masks(0.5)
    want = pm.run_patched(batch.clean, masks, pm.src_outs(batch.corrupt))
    assert pm.cuda() is pm and pm.device.type == "cuda"
    assert all(m.device.type == "cuda" for m in pm.patch_masks.values())
    masks = {n: m.cuda() for n, m in masks.items()}
    clean, corrupt = batch.clean.cuda(), batch.corrupt.cuda()
    got = pm.run_patched(clean, masks, pm.src_outs(corrupt))
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)
    assert pm.to("cpu").device.type == "cpu"


def test_graph_modules_carry_block_kind_and_qkv():
    """Nothing needs to parse a hook name: the graph's modules say where they are."""
    spec = GraphSpec(n_layers=3, n_heads=4, n_kv_heads=2)
    g = build_graph(spec)
    for m in g.src_modules:
        assert m.kind == ("embed" if m.block is None else "attn" if m.n_heads else "mlp")
        assert m.block is None or m.module_name.startswith(f"blocks.{m.block}.")
    for m in g.dest_modules:
        assert m.module_name.startswith(f"blocks.{m.block}.")
        assert (m.qkv is not None) == m.module_name.endswith(("q_input", "k_input", "v_input"))
        assert m.qkv is None or m.module_name.endswith(f"hook_{m.qkv}_input")
    # and so do the nodes, matching their modules
    srcs = {m.module_name: m for m in g.src_modules}
    dests = {m.module_name: m for m in g.dest_modules}
    for n in g.srcs:
        assert (n.block, n.kind) == (srcs[n.module_name].block, srcs[n.module_name].kind)
    for n in g.dests:
        m = dests[n.module_name]
        assert (n.block, n.kind, n.qkv) == (m.block, m.kind, m.qkv)
        assert m.kind == ("attn" if m.qkv else "mlp" if "mlp" in m.module_name else "resid")
    assert [m.kind for m in build_graph(spec, factorized=False).dest_modules] == ["resid"] * 6
