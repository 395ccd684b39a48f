"""Workflow 6, the long tail: every ablation type through run_circuits with edge
patching (and reversed clean/corrupt, as auto-circuit's own experiments run it),
run_circuits' default patch type, zero ablation with clean_corrupt=None, the residual
(unfactorized) graph, PatchableModel's attributes and pass-throughs, node fields,
str(edge), the prune-metric registry, new_prune_scores' dtype, the loader's reseeding,
the tensor_ops metric helpers, the AUC wrappers, the cache helpers, and circuits of
size 0 from scores with infinite entries (as ACDC leaves never-pruned edges)."""

import os
import tempfile

import torch as t

from _common import DATASET_PATH, Recorder, bind_names, toy_model

rec = Recorder("w6_long_tail")
bind_names({
    "auto_circuit.data": ["load_datasets_from_json"],
    "auto_circuit.types": ["AblationType", "PatchType"],
    "auto_circuit.utils.ablation_activations": ["src_ablations", "batch_src_ablations"],
    "auto_circuit.utils.graph_utils": ["patchable_model", "edge_counts_util"],
    "auto_circuit.prune_algos.mask_gradient": ["mask_gradient_prune_scores"],
    "auto_circuit.prune": ["run_circuits"],
    "auto_circuit.metrics.prune_metrics.kl_div": ["measure_kl_div"],
    "auto_circuit.metrics.prune_metrics.answer_diff": ["measure_answer_diff"],
    "auto_circuit.metrics.prune_metrics.prune_metrics": ["PRUNE_METRICS", "PRUNE_METRIC_DICT"],
    "auto_circuit.metrics.area_under_curve": ["measurements_auc", "algo_measurements_auc",
                                              "task_measurements_auc"],
    "auto_circuit.utils.tensor_ops": [
        "indices_vals", "vocab_avg_val", "batch_avg_answer_val", "batch_answer_diffs",
        "batch_avg_answer_diff", "batch_answer_diff_percents", "correct_answer_proportion",
        "correct_answer_greater_than_incorrect_proportion", "multibatch_kl_div",
    ],
    "auto_circuit.utils.misc": ["save_cache", "load_cache"],
}, rec, globals())

device = t.device("cpu")

with rec.step("load_datasets_from_json reseeds torch"):
    t.manual_seed(1234)
    train_loader, test_loader = load_datasets_from_json(
        model=None, path=DATASET_PATH, device=device, prepend_bos=False,
        batch_size=16, train_test_size=(32, 32),
    )
    rec.num("reseed.torch_rand_after_loading", t.rand(1))

model = patchable_model(toy_model(), factorized=True, slice_output="last_seq", separate_qkv=True,
                        device=device)
batch = next(iter(test_loader))

# ---- scores to build circuits from: EAP (deterministic, agrees in w1)
with rec.step("mask_gradient_prune_scores (EAP)"):
    eap = mask_gradient_prune_scores(model=model, dataloader=train_loader, official_edges=None,
                                     grad_function="logit", answer_function="avg_diff", mask_val=0.0)
    rec.num("eap.sum", sum(float(v.sum()) for v in eap.values()))

sizes = [0, 3, 10, 40, 110]
for reverse in (False, True):
    for ab in ("RESAMPLE", "ZERO", "TOKENWISE_MEAN_CLEAN", "TOKENWISE_MEAN_CORRUPT",
               "TOKENWISE_MEAN_CLEAN_AND_CORRUPT", "BATCH_TOKENWISE_MEAN", "BATCH_ALL_TOK_MEAN"):
        tag = f"edge_patch{'.reversed' if reverse else ''}.{ab}"
        with rec.step(f"run_circuits(EDGE_PATCH, {ab}, reverse={reverse})"):
            outs = run_circuits(model=model, dataloader=test_loader, test_edge_counts=sizes,
                                prune_scores=eap, patch_type=PatchType.EDGE_PATCH,
                                ablation_type=getattr(AblationType, ab), reverse_clean_corrupt=reverse)
            rec.measurements(tag + ".logit_diff", measure_answer_diff(model, test_loader, outs))
            rec.measurements(tag + ".kl_div", measure_kl_div(model, test_loader, outs))

with rec.step("run_circuits default patch type"):
    outs = run_circuits(model=model, dataloader=test_loader, test_edge_counts=[10], prune_scores=eap,
                        ablation_type=AblationType.RESAMPLE)
    rec.measurements("default_patch_type.logit_diff", measure_answer_diff(model, test_loader, outs))

# ---- zero ablation with clean_corrupt=None (auto-circuit requires None there)
with rec.step("batch_src_ablations(ZERO, clean_corrupt=None)"):
    zeros = batch_src_ablations(model, test_loader, AblationType.ZERO, clean_corrupt=None)
    rec.num("zero_ablations.n_batches", len(zeros))
    rec.num("zero_ablations.abs_sum", sum(float(z.abs().sum()) for z in zeros.values()))
with rec.step("mask_gradient_prune_scores(ZERO, clean_corrupt=None)"):
    zg = mask_gradient_prune_scores(model=model, dataloader=train_loader, official_edges=None,
                                    grad_function="logit", answer_function="avg_diff", mask_val=0.0,
                                    ablation_type=AblationType.ZERO, clean_corrupt=None)
    rec.scores("zero_eap", model, zg)

# ---- circuits of size 0 from scores holding infinities (ACDC's never-pruned edges)
with rec.step("run_circuits with infinite scores"):
    inf_scores = {k: v.clone() for k, v in eap.items()}
    for e in sorted(model.edges, key=lambda e: e.name)[:4]:
        inf_scores[e.dest.module_name][e.patch_idx] = float("inf")
    outs = run_circuits(model=model, dataloader=test_loader, test_edge_counts=[0, 2, 4, 10, 110],
                        prune_scores=inf_scores, patch_type=PatchType.TREE_PATCH,
                        ablation_type=AblationType.RESAMPLE)
    rec.text("inf_scores.circuit_sizes", sorted(outs))
    rec.measurements("inf_scores.logit_diff", measure_answer_diff(model, test_loader, outs))

# ---- PatchableModel attributes and pass-throughs, nodes, edges
with rec.step("PatchableModel attributes"):
    rec.num("model.seq_dim", model.seq_dim)
    rec.text("model.is_factorized", model.is_factorized)
    rec.text("model.is_transformer", model.is_transformer)
    rec.text("model.kv_caches", model.kv_caches)
    rec.text("model.edge_dict", {str(k): len(v) for k, v in model.edge_dict.items()})
    rec.text("model.separate_qkv", model.separate_qkv)
with rec.step("PatchableModel.run_with_cache"):
    logits, cache = model.run_with_cache(batch.clean)
    rec.num("run_with_cache.logits_sum", logits.sum())
    rec.num("run_with_cache.resid_post_sum", cache["blocks.1.hook_resid_post"].sum())
with rec.step("PatchableModel.input_to_embed / blocks"):
    rec.num("input_to_embed.sum", model.input_to_embed(batch.clean)[0].sum())
    rec.num("blocks.len", len(model.blocks))
with rec.step("node fields"):
    for n in sorted(model.srcs | model.dests if isinstance(model.srcs, set) else (*model.srcs, *model.dests),
                    key=lambda n: (n.name, n.module_name)):
        key = f"node.{'src' if n in model.srcs else 'dest'}.{n.name}"
        rec.text(key, [n.module_name, n.layer, n.head_idx, n.head_dim, n.weight, n.weight_head_dim,
                       getattr(n, "min_src_idx", None) if n not in model.srcs else n.src_idx])
with rec.step("str(edge)"):
    rec.text("edges.str", sorted(str(e) for e in model.edges)[:12])
with rec.step("new_prune_scores dtype"):
    rec.text("new_prune_scores.dtype", {str(v.dtype) for v in model.new_prune_scores().values()})
    rec.text("circuit_prune_scores.dtype",
             {str(v.dtype) for v in model.circuit_prune_scores(edges=set(list(model.edges)[:3])).values()})
with rec.step("PRUNE_METRICS"):
    rec.text("prune_metrics.keys", [m.key for m in PRUNE_METRICS])
    rec.text("prune_metrics.names", [m.name for m in PRUNE_METRICS])
    rec.text("prune_metrics.plot", [(m.log_x, m.log_y, m.lower_better, m.y_min) for m in PRUNE_METRICS])
    rec.text("prune_metric_dict.keys", sorted(PRUNE_METRIC_DICT))

# ---- the residual (unfactorized) graph
with rec.step("patchable_model(factorized=False)"):
    resid = patchable_model(toy_model(), factorized=False, slice_output="last_seq",
                            separate_qkv=True, device=device)
    rec.text("resid_graph.n_edges", resid.n_edges)
    rec.text("resid_graph.edges", sorted(e.name for e in resid.edges))
    component = [e for e in resid.edges if not e.src.name.startswith("Resid")]
    rscores = mask_gradient_prune_scores(model=resid, dataloader=train_loader, official_edges=None,
                                         grad_function="logit", answer_function="avg_diff", mask_val=0.0)
    rec.vec("resid_graph.component_edge_scores",
            {e.name: float(rscores[e.dest.module_name][e.patch_idx]) for e in component})

# ---- tensor_ops metric helpers on the full model's logits
with rec.step("tensor_ops helpers"):
    with t.inference_mode():
        clean_logits = model(batch.clean)[model.out_slice]
        corrupt_logits = model(batch.corrupt)[model.out_slice]
    rec.num("indices_vals.sum", indices_vals(clean_logits, batch.answers).sum())
    rec.num("vocab_avg_val", vocab_avg_val(clean_logits, batch.answers))
    rec.num("batch_avg_answer_val", batch_avg_answer_val(clean_logits, batch))
    rec.num("batch_avg_answer_val.wrong", batch_avg_answer_val(clean_logits, batch, wrong_answer=True))
    rec.vec("batch_answer_diffs", {f"p{i}": v for i, v in enumerate(batch_answer_diffs(clean_logits, batch))})
    rec.num("batch_avg_answer_diff", batch_avg_answer_diff(clean_logits, batch))
    rec.vec("batch_answer_diff_percents",
            {f"p{i}": v for i, v in enumerate(batch_answer_diff_percents(corrupt_logits, clean_logits, batch))})
    rec.num("correct_answer_proportion", correct_answer_proportion(clean_logits, batch))
    rec.num("correct_answer_greater_than_incorrect_proportion",
            correct_answer_greater_than_incorrect_proportion(corrupt_logits, batch))
    rec.num("multibatch_kl_div", multibatch_kl_div(corrupt_logits.log_softmax(-1), clean_logits.log_softmax(-1)))

with rec.step("algo_measurements_auc / task_measurements_auc"):
    curves = {"a": [(0, 1.0), (1, 2.0), (10, 4.0), (100, 3.0)], "b": [(0, 0.5), (10, 0.25)], "one": [(0, 1.0)]}
    rec.text("algo_auc.keys", sorted(algo_measurements_auc(curves, log_x=True, log_y=False)))
    for k, v in algo_measurements_auc(curves, log_x=False, log_y=False).items():
        rec.num(f"algo_auc.linear.{k}", v)
    for k, v in task_measurements_auc({"task": curves}, log_x=True, log_y=False)["task"].items():
        rec.num(f"task_auc.logx.{k}", v)

with rec.step("save_cache / load_cache"):
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # edgewise: relative to the working directory; auto-circuit: its checkout
        try:
            save_cache({"eap": eap}, os.path.join(tmp, "cache"), "scores")
            name = sorted(os.listdir(os.path.join(tmp, "cache")))[0]
            back = load_cache(os.path.join(tmp, "cache"), name)
        finally:
            os.chdir(here)
    rec.num("cache.round_trip_sum", sum(float(v.sum()) for v in back["eap"].values()))
    rec.num("cache.round_trip_equal", float(all(t.equal(back["eap"][k], eap[k]) for k in eap)))

rec.dump()
