"""Node- and neuron-level EAP / EAP-IG on inputs / EAP-IG on activations equal their
closed form computed with plain TransformerLens hooks (the gradient at each source's own
output hook, or an MLP's input hook, times ``patch - clean``); node EAP equals the sum of
its outgoing edges' EAP scores; by default the scores are MIB's (the MLP gradient at its
input, divided by the number of prompts)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgewise import patchable_model
from edgewise.models import random_bridge, random_model
from edgewise.prune_algos.eap import edge_attribution_patching_prune_scores
from edgewise.prune_algos.loss import answer_loss, grad_values
from edgewise.prune_algos.node_attribution import flat_node_scores, node_attribution_scores
from edgewise.runtime.ablation import batch_src_ablations

from reference import capture_sources_and_dests
from util import VOCAB, grad_tol, hooked_case, hooked_only, random_loader

INPUT = "blocks.0.hook_resid_pre"


def reference_neuron_scores(pm, loader, ablation="resample", mlp_gradient="output", steps=None,
                            ks=None):  # fmt: skip
    """``{src module: [n, d_model]}`` from plain hooks: TransformerLens' own source
    hooks (``hook_result``, ``hook_mlp_out``, the embeddings) and destination hooks
    (``hook_mlp_in``), its own backward; with ``steps``, the gradient averaged over
    input embeddings interpolated from the corrupt prompt to the clean one, at ``k/steps``
    for ``k`` in ``ks`` (default ``1..steps``)."""
    patches = batch_src_ablations(pm, loader, ablation, None if "mean" in ablation else "corrupt")
    out = {m.module_name: torch.zeros(m.n_heads or 1, int(pm.cfg.d_model), dtype=torch.float64)
           for m in pm.graph.src_modules}  # fmt: skip
    for batch in loader:
        _, clean_acts = capture_sources_and_dests(pm, batch.clean)
        x_clean, x_corrupt = pm.output_at(INPUT, batch.clean), pm.output_at(INPUT, batch.corrupt)
        ks = range(1, steps + 1) if ks is None and steps else ks
        points = [(k / steps, 1 / steps) for k in ks] if steps else [(1.0, 1.0)]
        for alpha, weight in points:
            x = x_corrupt + alpha * (x_clean - x_corrupt)
            handle = pm.adapter.hook_point(INPUT).register_forward_hook(lambda _m, _i, _o, x=x: x)
            try:
                logits, acts = capture_sources_and_dests(pm, batch.clean)
            finally:
                handle.remove()
            loss = answer_loss(grad_values(logits, "logit"), batch, "avg_diff")
            names = sorted(acts)
            grads = dict(
                zip(names, torch.autograd.grad(loss, [acts[n] for n in names], allow_unused=True))
            )
            for m in pm.graph.src_modules:
                read = m.module_name
                if m.kind == "mlp" and mlp_gradient == "input":
                    read = f"blocks.{m.block}.hook_mlp_in"
                g = grads[read]
                g = torch.zeros_like(acts[read]) if g is None else g
                clean = clean_acts[m.module_name].detach()
                patch = patches[batch.key][m.src_lo : m.src_hi]
                if m.n_heads is None:
                    delta = (patch[0].expand_as(clean) - clean)[None]
                    g = g[None]
                else:  # [b, p, h, d] -> heads first
                    delta = patch.expand(-1, *clean.shape[:2], -1) - clean.permute(2, 0, 1, 3)
                    g = g.permute(2, 0, 1, 3)
                out[m.module_name] += weight * (g.double() * delta.double()).sum((1, 2))
    return out


def assert_scores_close(got, want, rel=1e-8):
    assert set(got) == set(want)
    scale = max(float(w.abs().max()) for w in want.values()) + 1e-12
    for n in want:
        torch.testing.assert_close(got[n].double(), want[n], atol=rel * scale, rtol=0)


@hooked_only("HookedTransformerConfig's shapes (parallel blocks, grouped-query attention "
             "with standard positions); bridges: test_neuron_eap_equals_closed_form_bridge, "
             "test_node_eap_is_the_sum_of_its_edges_bridge")
@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    n_layers=st.integers(1, 2),
    n_heads=st.sampled_from([1, 2, 4]),
    gqa=st.booleans(),
    attn_only=st.booleans(),
    parallel=st.booleans(),
    mlp_gradient=st.sampled_from(["output", "input"]),
    seed=st.integers(0, 2**16),
)
def test_node_and_neuron_eap_equal_closed_form_hooked(n_layers, n_heads, gqa, attn_only, parallel,
                                                      mlp_gradient, seed):  # fmt: skip
    n_kv = max(1, n_heads // 2) if gqa else None
    model = random_model(
        n_layers=n_layers, n_heads=n_heads, d_head=2, d_vocab=VOCAB, n_kv_heads=n_kv,
        attn_only=attn_only, parallel_attn_mlp=parallel and not attn_only,
        positional_embedding_type="rotary" if gqa else "standard", dtype=torch.float64, seed=seed,
    )  # fmt: skip
    pm = patchable_model(model)
    loader = random_loader(seed=seed % 97)
    want = reference_neuron_scores(pm, loader, mlp_gradient=mlp_gradient)
    neuron = node_attribution_scores(
        pm, loader, level="neuron", mlp_gradient=mlp_gradient, scale="sum", progress=False
    )
    node = node_attribution_scores(
        pm, loader, level="node", mlp_gradient=mlp_gradient, scale="sum", progress=False
    )
    assert_scores_close(neuron, want)
    assert_scores_close(node, {n: w.sum(-1) for n, w in want.items()})
    assert flat_node_scores(pm, node).shape == (len(pm.srcs),)
    assert flat_node_scores(pm, neuron).shape == (len(pm.srcs), int(pm.cfg.d_model))
    if mlp_gradient == "output":
        # the node's output reaches the loss only through the edges out of it
        edges = edge_attribution_patching_prune_scores(pm, loader, progress=False)
        summed = torch.zeros(len(pm.srcs), dtype=torch.float64)
        for name, mod in pm.dest_modules.items():
            per_src = edges[name].double().reshape(-1, mod.src_hi - mod.src_lo).sum(0)
            summed[mod.src_lo : mod.src_hi] += per_src
        torch.testing.assert_close(flat_node_scores(pm, node).double(), summed,
                                   atol=1e-8 * (1 + float(summed.abs().max())), rtol=0)  # fmt: skip


@pytest.mark.parametrize("arch,kv", [("gpt2", None), ("llama", 2)])
def test_neuron_eap_equals_closed_form_bridge(arch, kv):
    model = random_bridge(arch, n_layers=2, n_heads=4, d_head=4, d_vocab=VOCAB, n_kv_heads=kv,
                          dtype=torch.float64)  # fmt: skip
    pm = patchable_model(model)
    loader = random_loader(seed=2)
    got = node_attribution_scores(pm, loader, level="neuron", mlp_gradient="output",
                                  scale="sum", progress=False)  # fmt: skip
    assert_scores_close(got, reference_neuron_scores(pm, loader), rel=grad_tol(pm, 1e-8))


@pytest.mark.parametrize("arch,kv,mlp_gradient", [("neox", None, "input"), ("llama", 2, "output")])
def test_node_eap_is_the_sum_of_its_edges_bridge(arch, kv, mlp_gradient):
    """GPT-NeoX (parallel blocks) and Llama (grouped-query attention) bridges: node and
    neuron EAP equal the closed form for either MLP gradient, and with the MLP's output
    gradient a node's score is the sum of the EAP scores of the edges out of it."""
    model = random_bridge(arch, n_layers=2, n_heads=2, d_head=2, d_vocab=VOCAB, n_kv_heads=kv,
                          dtype=torch.float64)  # fmt: skip
    pm = patchable_model(model)
    loader = random_loader(seed=3)
    rel = grad_tol(pm, 1e-8)
    want = reference_neuron_scores(pm, loader, mlp_gradient=mlp_gradient)
    kw = {"mlp_gradient": mlp_gradient, "scale": "sum", "progress": False}
    neuron = node_attribution_scores(pm, loader, level="neuron", **kw)
    node = node_attribution_scores(pm, loader, level="node", **kw)
    assert_scores_close(neuron, want, rel=rel)
    assert_scores_close(node, {n: w.sum(-1) for n, w in want.items()}, rel=rel)
    assert flat_node_scores(pm, neuron).shape == (len(pm.srcs), int(pm.cfg.d_model))
    if mlp_gradient == "output":
        edges = edge_attribution_patching_prune_scores(pm, loader, progress=False)
        summed = torch.zeros(len(pm.srcs), dtype=torch.float64)
        for name, mod in pm.dest_modules.items():
            summed[mod.src_lo : mod.src_hi] += edges[name].double().reshape(-1, mod.src_hi - mod.src_lo).sum(0)
        torch.testing.assert_close(flat_node_scores(pm, node).double(), summed,
                                   atol=rel * (1 + float(summed.abs().max())), rtol=0)  # fmt: skip


def small_pm():
    try:
        model = random_model(n_layers=2, n_heads=2, d_head=2, d_vocab=VOCAB, dtype=torch.float64)
    except Exception:  # TransformerLens 4.x: bridges only
        model = random_bridge("gpt2", n_layers=2, n_heads=2, d_head=2, d_vocab=VOCAB,
                              dtype=torch.float64)  # fmt: skip
    return patchable_model(model)


def test_eap_ig_inputs_equals_interpolated_closed_form_and_one_step_is_eap():
    pm = small_pm()
    loader = random_loader(seed=8)
    got = node_attribution_scores(pm, loader, method="eap-ig-inputs", level="neuron",
                                  integrated_grad_samples=3, mlp_gradient="output", scale="sum",
                                  progress=False)  # fmt: skip
    assert_scores_close(got, reference_neuron_scores(pm, loader, steps=3))
    one = node_attribution_scores(pm, loader, method="eap-ig-inputs", integrated_grad_samples=1,
                                  progress=False)  # fmt: skip
    assert_scores_close(one, node_attribution_scores(pm, loader, progress=False))
    corrupt_end = node_attribution_scores(pm, loader, method="eap-ig-inputs", level="neuron",
                                          integrated_grad_samples=2, endpoint="corrupt",
                                          mlp_gradient="output", scale="sum", progress=False)  # fmt: skip
    assert_scores_close(corrupt_end, reference_neuron_scores(pm, loader, steps=2, ks=[0, 1]))


@pytest.mark.parametrize("ablation", ["zero", "tokenwise_mean_clean"])
def test_other_ablations_equal_closed_form(ablation):
    pm = small_pm()
    loader = random_loader(seed=9)
    got = node_attribution_scores(
        pm, loader, level="neuron", ablation_type=ablation, scale="sum", progress=False
    )
    want = reference_neuron_scores(pm, loader, ablation=ablation, mlp_gradient="input")
    assert_scores_close(got, want)


def test_bad_arguments_name_the_parameter():
    pm = small_pm()
    loader = random_loader()
    for kwargs, match in [
        ({"method": "ig"}, "method must be"),
        ({"level": "edge"}, "level must be"),
        ({"mlp_gradient": "middle"}, "mlp_gradient must be"),
        ({"scale": "avg"}, "scale must be 'sum'"),
        ({"endpoint": "middle"}, "endpoint must be"),
        ({"method": "eap-ig-inputs", "ablation_type": "zero"}, "corrupt prompts"),
        ({"grad_function": "nope"}, "grad_function"),
    ]:
        with pytest.raises(ValueError, match=match):
            node_attribution_scores(pm, loader, progress=False, **kwargs)
    residual = patchable_model(pm.wrapped_model, factorized=False)
    with pytest.raises(ValueError, match="factorized=True, or pass mlp_gradient='output'"):
        node_attribution_scores(residual, loader, progress=False)  # the default: "input"
    node_attribution_scores(residual, loader, mlp_gradient="output", progress=False)


def test_defaults_are_mibs_mlp_input_gradient_and_scale():
    """By default an MLP's gradient is read at its input (``hook_mlp_in``) and the sum
    over batches is divided by the number of prompts: 7 here, in batches of 3, 3 and 1."""
    pm = small_pm()
    loader = random_loader(seed=10, n=7, batch_size=3, drop_last=False)
    assert [b.clean.shape[0] for b in loader] == [3, 3, 1]
    at_input = {n: w / 7 for n, w in reference_neuron_scores(pm, loader, mlp_gradient="input").items()}
    at_output = {n: w / 7 for n, w in reference_neuron_scores(pm, loader).items()}
    got = node_attribution_scores(pm, loader, level="neuron", progress=False)
    assert_scores_close(got, at_input)
    mlps = [m.module_name for m in pm.graph.src_modules if m.kind == "mlp"]
    assert all(not torch.allclose(at_input[n], at_output[n]) for n in mlps)
    node = node_attribution_scores(pm, loader, progress=False)
    assert_scores_close(node, {n: w.sum(-1) for n, w in at_input.items()})
    summed = node_attribution_scores(pm, loader, scale="sum", progress=False)
    assert all(torch.equal(node[n], summed[n] / 7) for n in node)


def reference_ig_activations_neurons(pm, loader, m):
    """MIB's node-level EAP-IG on activations with plain TransformerLens hooks, as
    ``get_scores_ig_activations`` of EAP-IG's ``attribute_node.py`` writes it: for each
    module's output hook (the embeddings, a block's ``hook_result`` with all its heads, an
    MLP's ``hook_mlp_out``) and ``k = 1..m``, replace the output by ``a clean + (1 - a)
    corrupt + out * 0`` (``a = k/m``), and add every node's ``gradient . (corrupt - clean)``;
    divided by the number of passes, summed over batches. ``{"input": scores, "output":
    scores}``: an MLP's gradient read at its input or at its output."""
    modules = list(pm.graph.src_modules)
    out = {read: {mod.module_name: torch.zeros(mod.n_heads or 1, int(pm.cfg.d_model),
                                               dtype=torch.float64) for mod in modules}
           for read in ("input", "output")}  # fmt: skip
    for batch in loader:
        _, clean = capture_sources_and_dests(pm, batch.clean)
        _, corrupt = capture_sources_and_dests(pm, batch.corrupt)
        for moved in modules:
            name = moved.module_name
            c_n, x_n = clean[name].detach(), corrupt[name].detach()
            for k in range(1, m + 1):
                a = k / m

                def hook(_m, _i, o, a=a, c=c_n, x=x_n):
                    return a * c + (1 - a) * x + o * 0

                handle = pm.adapter.hook_point(name).register_forward_hook(hook)
                try:
                    logits, acts = capture_sources_and_dests(pm, batch.clean)
                finally:
                    handle.remove()
                loss = answer_loss(grad_values(logits, "logit"), batch, "avg_diff")
                names = sorted(acts)
                grads = dict(zip(names, torch.autograd.grad(loss, [acts[n] for n in names],
                                                            allow_unused=True)))  # fmt: skip
                for mod, read in ((mod, read) for mod in modules for read in out):
                    point = mod.module_name
                    if mod.kind == "mlp" and read == "input":
                        point = f"blocks.{mod.block}.hook_mlp_in"
                    g = grads[point]
                    g = torch.zeros_like(acts[point]) if g is None else g
                    delta = corrupt[mod.module_name].detach() - clean[mod.module_name].detach()
                    if mod.n_heads is None:
                        delta, g = delta[None], g[None]
                    else:  # [b, p, h, d] -> heads first
                        delta, g = delta.permute(2, 0, 1, 3), g.permute(2, 0, 1, 3)
                    term = (g.double() * delta.double()).sum((1, 2)) / (len(modules) * m)
                    out[read][mod.module_name] += term
    return out


@pytest.mark.parametrize("kind", [pytest.param("hooked", marks=hooked_case), "bridge"])
def test_eap_ig_activations_equals_mibs_computation_with_plain_hooks(kind):
    if kind == "hooked":
        model = random_model(n_layers=2, n_heads=2, d_head=2, d_vocab=VOCAB, dtype=torch.float64)
    else:
        model = random_bridge("gpt2", n_layers=2, n_heads=2, d_head=2, d_vocab=VOCAB,
                              dtype=torch.float64)  # fmt: skip
    pm = patchable_model(model)
    loader = random_loader(seed=11, n=3, batch_size=2, drop_last=False)  # batches of 2 and 1
    want = reference_ig_activations_neurons(pm, loader, 2)
    got = node_attribution_scores(pm, loader, method="eap-ig-activations", level="neuron",
                                  integrated_grad_samples=2, progress=False)  # fmt: skip
    assert_scores_close(got, {n: w / 3 for n, w in want["input"].items()})
    out = node_attribution_scores(pm, loader, method="eap-ig-activations", level="node",
                                  integrated_grad_samples=2, mlp_gradient="output",
                                  scale="sum", progress=False)  # fmt: skip
    assert_scores_close(out, {n: w.sum(-1) for n, w in want["output"].items()})
    # a moved MLP passes no gradient back to its input: the two reads differ on MLPs
    mlp = next(mod.module_name for mod in pm.graph.src_modules if mod.kind == "mlp")
    assert not torch.allclose(want["input"][mlp], want["output"][mlp])
