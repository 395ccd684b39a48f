"""Workflow 4, other features: ablation types, patch_mode and mask state, circuits from an
edge dict, the answer metrics and their options, AUCs, score helpers, activation
magnitude, and the edge set. (After auto-circuit's "Other Features" guide and demos.)"""

import torch as t

from _common import DATASET_PATH, Recorder, bind_names, toy_model

rec = Recorder("w4_other_features")
bind_names({
    "auto_circuit.data": ["load_datasets_from_json"],
    "auto_circuit.types": ["AblationType", "PatchType", "CircuitOutputs", "PruneScores"],
    "auto_circuit.utils.ablation_activations": ["src_ablations"],
    "auto_circuit.utils.graph_utils": ["patchable_model", "patch_mode", "set_all_masks",
                                       "edge_counts_util"],
    "auto_circuit.prune": ["run_circuits"],
    "auto_circuit.prune_algos.activation_magnitude": ["activation_magnitude_prune_scores"],
    "auto_circuit.metrics.prune_metrics.kl_div": ["measure_kl_div"],
    "auto_circuit.metrics.prune_metrics.correct_answer_percent": ["measure_correct_ans_percent"],
    "auto_circuit.metrics.prune_metrics.answer_value": ["measure_answer_val"],
    "auto_circuit.metrics.prune_metrics.answer_diff": ["measure_answer_diff"],
    "auto_circuit.metrics.prune_metrics.answer_diff_percent": ["measure_answer_diff_percent"],
    "auto_circuit.metrics.area_under_curve": ["measurements_auc"],
    "auto_circuit.utils.tensor_ops": ["desc_prune_scores", "prune_scores_threshold"],
}, rec, globals())

device = t.device("cpu")
train_loader, test_loader = load_datasets_from_json(
    model=None, path=DATASET_PATH, device=device, prepend_bos=False,
    batch_size=16, train_test_size=(64, 64),
)
model = patchable_model(
    toy_model(), factorized=True, slice_output="last_seq", separate_qkv=True, device=device
)
batch = next(iter(test_loader))

# ---- ablation types, through patch_mode with named edges (zero_ablate_an_edge demo)
zero_edges = ["Resid Start->MLP 1", "MLP 0->A1.0.Q", "A1.0->Resid End", "A0.2->MLP 0"]
for ab in ("ZERO", "RESAMPLE", "TOKENWISE_MEAN_CORRUPT", "TOKENWISE_MEAN_CLEAN", "BATCH_TOKENWISE_MEAN"):
    with rec.step(f"src_ablations+patch_mode.{ab}"):
        # a tensor for ZERO / RESAMPLE / BATCH_TOKENWISE_MEAN, the loader for dataset means
        source = {"ZERO": batch.clean, "RESAMPLE": batch.corrupt,
                  "BATCH_TOKENWISE_MEAN": batch.corrupt}.get(ab, test_loader)
        ablations = src_ablations(model, source, getattr(AblationType, ab))
        with patch_mode(model, ablations, zero_edges):
            patched_out = model(batch.clean)
        rec.num(f"ablate.{ab}.out_sum", patched_out.sum())
        rec.num(f"ablate.{ab}.out_abs_sum", patched_out.abs().sum())

# ---- set_all_masks: every edge half-patched
with rec.step("set_all_masks(0.5)+patch_mode"):
    resample = src_ablations(model, batch.corrupt, AblationType.RESAMPLE)
    set_all_masks(model, 0.5)
    with patch_mode(model, resample):
        half = model(batch.clean)
    set_all_masks(model, 0.0)
    rec.num("set_all_masks.half.out_sum", half.sum())
    with patch_mode(model, resample):
        none_patched = model(batch.clean)
    rec.num("set_all_masks.zero.out_sum", none_patched.sum())

# ---- an edge name that is not in the graph ("MLP 1" comes after layer 1's heads)
with rec.step("patch_mode(edges=[unknown name])"):
    ablations = src_ablations(model, batch.clean, AblationType.ZERO)
    with patch_mode(model, ablations, ["MLP 1->A1.0.Q", "A1.0->Resid End"]):
        out = model(batch.clean)
    rec.num("unknown_edge_name.out_sum", out.sum())

# ---- the edge set
with rec.step("model.edges as a set"):
    chosen = {e for e in model.edges if e.name in zero_edges}
    rec.num("edges.minus_chosen", len(model.edges - chosen))
    rec.num("edges.and_chosen", len(model.edges & chosen))
    rec.num("edges.or_chosen", len(model.edges | chosen))
    rec.num("edges.contains", sum(e in model.edges for e in chosen))

# ---- circuits from an edge dict (other_features demo: names as keys)
patch_edges = {
    "Resid Start->MLP 0": 1.0, "MLP 0->MLP 1": 2.0, "MLP 0->A1.0.Q": 1.0,
    "MLP 1->Resid End": 2.0, "A1.0->Resid End": 1.0, "A0.2->MLP 0": 3.0,
}
with rec.step("circuit_prune_scores(edge_dict=names)"):
    ps = model.circuit_prune_scores(edge_dict=patch_edges)
    rec.scores("circuit_by_name", model, ps)
with rec.step("circuit_prune_scores(edge_dict=Edge keys)"):
    ps = model.circuit_prune_scores(edge_dict={e: patch_edges[e.name] for e in model.edges
                                               if e.name in patch_edges})
    rec.scores("circuit_by_edge", model, ps)
with rec.step("circuit_prune_scores(edges, bool=True)"):
    rec.num("circuit_bool.count",
            sum(int(v.sum()) for v in model.circuit_prune_scores(edges=list(patch_edges), bool=True).values()))
with rec.step("new_prune_scores / Edge.patch_mask / Edge.prune_score"):
    rec.num("new_prune_scores.sum", sum(v.sum() for v in model.new_prune_scores(init_val=0.25).values()))
    e0 = sorted(chosen, key=lambda e: e.name)[0]
    rec.text("edge.patch_mask.shape", list(e0.patch_mask(model).shape))
    rec.num("edge.prune_score", e0.prune_score(ps))

with rec.step("run_circuits(EDGE_PATCH, RESAMPLE)"):
    circuit_outs = run_circuits(
        model=model, dataloader=test_loader,
        test_edge_counts=edge_counts_util(model.edges, prune_scores=ps),
        prune_scores=ps, patch_type=PatchType.EDGE_PATCH, ablation_type=AblationType.RESAMPLE,
    )
    rec.text("edge_patch.keys", sorted(circuit_outs.keys()))

metrics = {}
with rec.step("metrics"):
    metrics["kl_div"] = measure_kl_div(model, test_loader, circuit_outs)
    metrics["correct_ans_percent"] = measure_correct_ans_percent(model, test_loader, circuit_outs)
    metrics["correct_gt_incorrect_percent"] = measure_correct_ans_percent(
        model, test_loader, circuit_outs, out_of_correct_and_incorrect_answers=True)
    metrics["answer_logit"] = measure_answer_val(model, test_loader, circuit_outs)
    metrics["wrong_answer_logit"] = measure_answer_val(model, test_loader, circuit_outs,
                                                       wrong_answer=True)
    metrics["answer_prob"] = measure_answer_val(model, test_loader, circuit_outs, prob_func="softmax")
    metrics["logprob_diff"] = measure_answer_diff(model, test_loader, circuit_outs,
                                                  prob_func="log_softmax")
    metrics["prob_diff_percent"] = measure_answer_diff_percent(model, test_loader, circuit_outs,
                                                               prob_func="softmax")
    metrics["logit_diff_percent_mean_of_diffs"] = measure_answer_diff_percent(
        model, test_loader, circuit_outs, diff_of_means=False)
for k, v in metrics.items():
    rec.measurements("edge_patch." + k, v)

# ---- a tree-patched sweep over activation magnitudes, then AUCs
with rec.step("activation_magnitude_prune_scores"):
    act_mag = activation_magnitude_prune_scores(model, train_loader, None)
    rec.scores("act_mag", model, act_mag)
with rec.step("run_circuits(TREE_PATCH, TOKENWISE_MEAN_CORRUPT, act_mag)"):
    tree_outs = run_circuits(
        model=model, dataloader=test_loader, test_edge_counts=[0, 1, 3, 10, 30, 60, 110],
        prune_scores=act_mag, patch_type=PatchType.TREE_PATCH,
        ablation_type=AblationType.TOKENWISE_MEAN_CORRUPT,
    )
    kl = measure_kl_div(model, test_loader, tree_outs)
    ld = measure_answer_diff_percent(model, test_loader, tree_outs)
    rec.measurements("tree.kl_div", kl)
    rec.measurements("tree.kl_div_to_corrupt",
                     measure_kl_div(model, test_loader, tree_outs, compare_to_clean=False))
    rec.measurements("tree.logit_diff_percent", ld)
with rec.step("measurements_auc(log_x, linear y)"):
    rec.num("auc.logit_diff_percent.logx", measurements_auc(ld, log_x=True, log_y=False, y_min=None))
    rec.num("auc.kl_div.linear", measurements_auc(kl, log_x=False, log_y=False, y_min=None))
with rec.step("measurements_auc(log_y)"):
    rec.num("auc.kl_div.logx_logy", measurements_auc(kl, log_x=True, log_y=True, y_min=1e-2))

with rec.step("desc_prune_scores / prune_scores_threshold"):
    desc = desc_prune_scores(act_mag)
    rec.vec("desc_prune_scores.first10", {f"i{i}": float(v) for i, v in enumerate(desc[:10])})
    rec.num("desc_prune_scores.len", len(desc))
    rec.num("prune_scores_threshold(10)", prune_scores_threshold(act_mag, 10))
    rec.num("prune_scores_threshold(0)", prune_scores_threshold(act_mag, 0))

rec.dump()
