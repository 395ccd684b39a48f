"""Workflow 1, getting started: load the data, make the model patchable, patch a few
edges by hand, find a circuit with one algorithm, run circuits of increasing size,
measure them, draw the graph. (After auto-circuit's "Getting Started" guide.)"""

import torch as t

from _common import DATASET_PATH, Recorder, bind_names, toy_model

rec = Recorder("w1_getting_started")
bind_names({
    "auto_circuit.data": ["load_datasets_from_json"],
    "auto_circuit.types": ["AblationType", "PatchType"],
    "auto_circuit.utils.ablation_activations": ["src_ablations"],
    "auto_circuit.utils.graph_utils": ["patch_mode", "patchable_model", "edge_counts_util"],
    "auto_circuit.prune_algos.mask_gradient": ["mask_gradient_prune_scores"],
    "auto_circuit.prune": ["run_circuits"],
    "auto_circuit.metrics.prune_metrics.kl_div": ["measure_kl_div"],
    "auto_circuit.metrics.prune_metrics.answer_diff_percent": ["measure_answer_diff_percent"],
    "auto_circuit.visualize": ["draw_seq_graph"],
}, rec, globals())

device = t.device("cpu")
model = toy_model()  # stands in for load_tl_model("gpt2", device): no downloads

with rec.step("load_datasets_from_json"):
    train_loader, test_loader = load_datasets_from_json(
        model=None,  # the prompts are token ids already (BOS included)
        path=DATASET_PATH,
        device=device,
        prepend_bos=False,
        batch_size=16,
        train_test_size=(64, 64),
    )
    rec.num("data.n_train_batches", len(train_loader))
    rec.num("data.n_test_batches", len(test_loader))
    first = next(iter(test_loader))
    rec.num("data.first_test_batch.clean_sum", first.clean.sum())
    rec.num("data.first_test_batch.corrupt_sum", first.corrupt.sum())
    rec.text("data.loader_seq_len_without_return_seq_length", test_loader.seq_len)

with rec.step("patchable_model"):
    model = patchable_model(
        model,
        factorized=True,
        slice_output="last_seq",
        separate_qkv=True,
        device=device,
    )
    rec.num("graph.n_edges", len(model.edges))
    rec.text("graph.edge_names_sorted_first10", sorted(e.name for e in model.edges)[:10])

with rec.step("src_ablations"):
    ablations = src_ablations(model, test_loader, AblationType.TOKENWISE_MEAN_CORRUPT)
    rec.text("ablations.shape", list(ablations.shape))
    rec.num("ablations.sum", ablations.sum())
    rec.num("ablations.abs_sum", ablations.abs().sum())

patch_edges = [
    "Resid Start->MLP 0",
    "MLP 0->A1.0.Q",
    "MLP 0->MLP 1",
    "A0.1->A1.2.K",
    "A1.0->Resid End",
    "MLP 1->Resid End",
]

with rec.step("patch_mode"):
    outs = []
    with patch_mode(model, ablations, patch_edges):
        for batch in test_loader:
            patched_out = model(batch.clean)
            outs.append(patched_out)
    patched = t.cat(outs)
    rec.text("patch_mode.out_shape", list(patched.shape))
    rec.num("patch_mode.out_sum", patched.sum())
    rec.num("patch_mode.out_abs_sum", patched.abs().sum())
    with t.no_grad():
        plain = t.cat([model(b.clean) for b in test_loader])
    rec.num("unpatched_after_block.out_sum", plain.sum())

with rec.step("current_patch_masks_as_prune_scores"):
    prune_scores = model.current_patch_masks_as_prune_scores()
    rec.scores("patch_masks", model, prune_scores)

with rec.step("draw_seq_graph(patch masks)"):
    fig = draw_seq_graph(model, prune_scores, display_ipython=False)
    rec.text("draw_seq_graph.type", type(fig).__name__)

with rec.step("mask_gradient_prune_scores"):
    attribution_scores = mask_gradient_prune_scores(
        model=model,
        dataloader=train_loader,
        official_edges=None,
        grad_function="logit",
        answer_function="avg_diff",
        mask_val=0.0,
    )
    rec.scores("eap", model, attribution_scores)

with rec.step("draw_seq_graph(attribution)"):
    fig = draw_seq_graph(model, attribution_scores, 3.5, layer_spacing=True, orientation="v",
                         display_ipython=False)

with rec.step("edge_counts_util"):
    counts = edge_counts_util(model.edges, prune_scores=attribution_scores)
    rec.text("edge_counts.default", counts)

with rec.step("run_circuits"):
    circuit_outs = run_circuits(
        model=model,
        dataloader=test_loader,
        test_edge_counts=counts,
        prune_scores=attribution_scores,
        patch_type=PatchType.TREE_PATCH,
        ablation_type=AblationType.RESAMPLE,
    )
    rec.text("run_circuits.keys", sorted(circuit_outs.keys()))

with rec.step("measure_kl_div"):
    rec.measurements("kl_div", measure_kl_div(model, test_loader, circuit_outs))

with rec.step("measure_answer_diff_percent"):
    rec.measurements("logit_diff_percent", measure_answer_diff_percent(model, test_loader, circuit_outs))

rec.dump()
