"""Workflow 3, token positions: a graph with one edge per token position
(``seq_len``), edge attribution on it, per-position totals, circuits over it.
(After auto-circuit's token-specific circuit discovery demo.)"""

import math
from collections import defaultdict

import torch as t

from _common import DATASET_PATH, Recorder, bind_names, toy_model

rec = Recorder("w3_token_positions")
bind_names({
    "auto_circuit.data": ["load_datasets_from_json"],
    "auto_circuit.types": ["AblationType", "PatchType", "PruneScores"],
    "auto_circuit.utils.graph_utils": ["patchable_model", "edge_counts_util"],
    "auto_circuit.prune_algos.mask_gradient": ["mask_gradient_prune_scores"],
    "auto_circuit.prune": ["run_circuits"],
    "auto_circuit.metrics.prune_metrics.answer_diff_percent": ["measure_answer_diff_percent"],
    "auto_circuit.metrics.prune_metrics.correct_answer_percent": ["measure_correct_ans_percent"],
    "auto_circuit.visualize": ["draw_seq_graph"],
}, rec, globals())

device = t.device("cpu")
with rec.step("load_datasets_from_json(return_seq_length=True)"):
    train_loader, test_loader = load_datasets_from_json(
        model=None, path=DATASET_PATH, device=device, prepend_bos=False,
        batch_size=16, train_test_size=(64, 64), return_seq_length=True,
    )
    rec.num("data.seq_len", test_loader.seq_len)
    rec.text("data.seq_labels", train_loader.seq_labels)
    rec.text("data.word_idxs", sorted(train_loader.word_idxs.items()))

with rec.step("patchable_model(seq_len)"):
    model = patchable_model(
        toy_model(), factorized=True, slice_output="last_seq",
        seq_len=test_loader.seq_len, separate_qkv=True, device=device,
    )
    rec.num("graph.n_edges", len(model.edges))
    per_pos = defaultdict(int)
    for e in model.edges:
        per_pos[e.seq_idx] += 1
    rec.vec("graph.edges_per_position", {f"pos{k}": v for k, v in sorted(per_pos.items())})

with rec.step("mask_gradient_prune_scores"):
    attribution_scores = mask_gradient_prune_scores(
        model=model, dataloader=train_loader, official_edges=None,
        grad_function="logit", answer_function="avg_diff", mask_val=0.0,
    )
    rec.scores("eap_tok", model, attribution_scores)
    totals, abs_totals = defaultdict(list), defaultdict(list)
    for e in model.edges:
        v = float(attribution_scores[e.dest.module_name][e.patch_idx])
        totals[e.seq_idx].append(v)
        abs_totals[e.seq_idx].append(abs(v))
    rec.vec("eap_tok.sum_per_position", {f"pos{k}": math.fsum(v) for k, v in sorted(totals.items())})
    rec.vec("eap_tok.abs_sum_per_position",
            {f"pos{k}": math.fsum(v) for k, v in sorted(abs_totals.items())})

with rec.step("draw_seq_graph(seq_labels)"):
    fig = draw_seq_graph(model, attribution_scores, 3.5, seq_labels=train_loader.seq_labels,
                         display_ipython=False)

with rec.step("run_circuits(token edges)"):
    outs = run_circuits(
        model=model, dataloader=test_loader, test_edge_counts=[0, 10, 50, 100, 400, len(model.edges)],
        prune_scores=attribution_scores, patch_type=PatchType.TREE_PATCH,
        ablation_type=AblationType.RESAMPLE,
    )
    rec.text("run_circuits.keys", sorted(outs.keys()))
    rec.measurements("tok.logit_diff_percent", measure_answer_diff_percent(model, test_loader, outs))
    rec.measurements("tok.correct_ans_percent", measure_correct_ans_percent(model, test_loader, outs))

rec.dump()
