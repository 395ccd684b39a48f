"""Workflow 2, circuit discovery: several algorithms on the same model and data, and the
edge-count helpers. (After auto-circuit's "Circuit Discovery" guide and its
prune_algos reference.) ACDC visits edges in auto-circuit's set order, which depends on
PYTHONHASHSEED; compare.py runs the auto-circuit side under two seeds to tell whether
that order matters here."""

import torch as t

from _common import DATASET_PATH, LIB, Recorder, bind_names, toy_model

rec = Recorder("w2_circuit_discovery")
bind_names({
    "auto_circuit.data": ["load_datasets_from_json"],
    "auto_circuit.types": ["AblationType", "PatchType", "EdgeCounts", "PruneScores"],
    "auto_circuit.utils.graph_utils": ["patchable_model", "edge_counts_util"],
    "auto_circuit.prune_algos.mask_gradient": ["mask_gradient_prune_scores"],
    "auto_circuit.prune_algos.edge_attribution_patching": ["edge_attribution_patching_prune_scores"],
    "auto_circuit.prune_algos.ACDC": ["acdc_prune_scores"],
    "auto_circuit.prune_algos.subnetwork_probing": ["subnetwork_probing_prune_scores"],
    "auto_circuit.prune_algos.circuit_probing": ["circuit_probing_prune_scores"],
    "auto_circuit.prune": ["run_circuits"],
    "auto_circuit.metrics.prune_metrics.answer_diff": ["measure_answer_diff"],
}, rec, globals())

device = t.device("cpu")
train_loader, test_loader = load_datasets_from_json(
    model=None, path=DATASET_PATH, device=device, prepend_bos=False,
    batch_size=16, train_test_size=(64, 64),
)
model = patchable_model(
    toy_model(), factorized=True, slice_output="last_seq", separate_qkv=True, device=device
)

algos = {}
with rec.step("eap_mask_gradient(mask_val=0)"):
    algos["eap"] = mask_gradient_prune_scores(
        model=model, dataloader=train_loader, official_edges=None,
        grad_function="logit", answer_function="avg_diff", mask_val=0.0,
    )
with rec.step("mask_gradient(mask_val=0.5, logprob avg_val)"):
    algos["grad_half_logprob"] = mask_gradient_prune_scores(
        model=model, dataloader=train_loader, official_edges=None,
        grad_function="logprob", answer_function="avg_val", mask_val=0.5,
    )
with rec.step("integrated_gradients(10 samples)"):
    algos["ig10"] = mask_gradient_prune_scores(
        model=model, dataloader=train_loader, official_edges=None,
        grad_function="logit", answer_function="avg_diff", integrated_grad_samples=10,
    )
with rec.step("edge_attribution_patching_prune_scores"):
    algos["eap_reference"] = edge_attribution_patching_prune_scores(
        model=model, dataloader=train_loader, official_edges=None,
    )
with rec.step("acdc(tau=1e-2)"):
    algos["acdc"] = acdc_prune_scores(
        model=model, dataloader=train_loader, official_edges=None,
        tao_exps=[-2], tao_bases=[1],
    )
with rec.step("subnetwork_probing(20 epochs)"):
    t.manual_seed(0)
    algos["subnetwork_probing"] = subnetwork_probing_prune_scores(
        model=model, dataloader=train_loader, official_edges=None,
        learning_rate=0.1, epochs=20, regularize_lambda=0.5, mask_fn="hard_concrete",
    )
# auto-circuit's edge mode patches the corrupt prompts' token-wise mean, not the clean
# values its docstring names; edgewise does the latter unless told (docs/auto_circuit.md).
AC_EDGE_MODE = {"ablation_type": AblationType.TOKENWISE_MEAN_CORRUPT} if LIB == "edgewise" else {}
if AC_EDGE_MODE:
    rec.note("subnetwork probing edge mode: edgewise side passes ablation_type=TOKENWISE_MEAN_CORRUPT")
with rec.step("subnetwork_probing(hard concrete, edge mode, auto-circuit's patches)"):
    t.manual_seed(0)
    algos["sp_hc_edge_ac_patches"] = subnetwork_probing_prune_scores(
        model=model, dataloader=train_loader, official_edges=None,
        learning_rate=0.1, epochs=5, regularize_lambda=0.5, mask_fn="hard_concrete", **AC_EDGE_MODE,
    )
with rec.step("subnetwork_probing(sigmoid, edge mode)"):
    algos["sp_sigmoid_edge"] = subnetwork_probing_prune_scores(
        model=model, dataloader=train_loader, official_edges=None,
        learning_rate=0.1, epochs=10, regularize_lambda=0.5, mask_fn="sigmoid", **AC_EDGE_MODE,
    )
with rec.step("subnetwork_probing(sigmoid, edge mode, answer target)"):
    algos["sp_sigmoid_answer"] = subnetwork_probing_prune_scores(
        model=model, dataloader=train_loader, official_edges=None, epochs=5,
        mask_fn="sigmoid", faithfulness_target="answer", **AC_EDGE_MODE,
    )
with rec.step("subnetwork_probing(sigmoid, tree, circuit_size, avoid_edges)"):
    avoid = {e for e in model.edges if e.name in ("MLP 1->Resid End", "Resid Start->A0.0.V")}
    algos["sp_sigmoid_tree"] = subnetwork_probing_prune_scores(
        model=model, dataloader=train_loader, official_edges=None, learning_rate=0.05,
        epochs=10, regularize_lambda=1.0, mask_fn="sigmoid", tree_optimisation=True,
        circuit_size=20, avoid_edges=avoid, avoid_lambda=2.0,
    )
with rec.step("subnetwork_probing(no mask_fn, tree, logit_diff_percent)"):
    algos["sp_raw_tree_ldp"] = subnetwork_probing_prune_scores(
        model=model, dataloader=train_loader, official_edges=None, learning_rate=0.01,
        epochs=5, mask_fn=None, tree_optimisation=True, init_val=0.5,
        faithfulness_target="logit_diff_percent",
    )
with rec.step("circuit_probing(sigmoid, tree, sizes 10 and 30)"):
    algos["cp_sigmoid_tree"] = circuit_probing_prune_scores(
        model=model, dataloader=train_loader, official_edges=None, epochs=5,
        mask_fn="sigmoid", tree_optimisation=True, circuit_sizes=[30, 10],
    )
for name, ps in algos.items():
    with rec.step(f"summary.{name}"):
        rec.scores(name, model, ps)

with rec.step("edge_counts_util"):
    rec.text("edge_counts.LOGARITHMIC", edge_counts_util(model.edges, EdgeCounts.LOGARITHMIC))
    rec.text("edge_counts.ALL.len", len(edge_counts_util(model.edges, EdgeCounts.ALL)))
    rec.text("edge_counts.proportions", edge_counts_util(model.edges, [0.1, 0.25, 0.5]))
    rec.text("edge_counts.default(eap)", edge_counts_util(model.edges, prune_scores=algos["eap"]))
    rec.text("edge_counts.GROUPS(eap)",
             edge_counts_util(model.edges, EdgeCounts.GROUPS, prune_scores=algos["eap"]))
with rec.step("edge_counts_util(acdc default)"):
    rec.text("edge_counts.default(acdc)", edge_counts_util(model.edges, prune_scores=algos["acdc"]))
with rec.step("edge_counts_util(true_edge_count=7)"):
    rec.text("edge_counts.LOGARITHMIC+true7",
             edge_counts_util(model.edges, EdgeCounts.LOGARITHMIC, algos["eap"], true_edge_count=7))

for name in ("eap", "ig10", "acdc"):
    with rec.step(f"run_circuits+logit_diff.{name}"):
        outs = run_circuits(
            model=model, dataloader=test_loader, test_edge_counts=[0, 5, 10, 20, 40, 110],
            prune_scores=algos[name], patch_type=PatchType.TREE_PATCH,
            ablation_type=AblationType.RESAMPLE,
        )
        rec.measurements(f"{name}.logit_diff", measure_answer_diff(model, test_loader, outs))

rec.dump()
