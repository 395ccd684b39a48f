"""Workflow 7, one destination per attention head (``separate_qkv=False``): patching
every edge, EAP and a circuit sweep, first with the flags ``load_tl_model`` sets (split
Q/K/V inputs on, where auto-circuit's ``hook_attn_in`` patches are discarded by
TransformerLens 2.x), then with split inputs switched off (where both libraries patch
the attention input)."""

import torch as t

from _common import DATASET_PATH, Recorder, bind_names, toy_model

rec = Recorder("w7_merged_qkv")
bind_names({
    "auto_circuit.data": ["load_datasets_from_json"],
    "auto_circuit.types": ["AblationType", "PatchType"],
    "auto_circuit.utils.ablation_activations": ["src_ablations"],
    "auto_circuit.utils.graph_utils": ["patchable_model", "patch_mode", "set_all_masks"],
    "auto_circuit.prune_algos.mask_gradient": ["mask_gradient_prune_scores"],
    "auto_circuit.prune": ["run_circuits"],
    "auto_circuit.metrics.prune_metrics.answer_diff": ["measure_answer_diff"],
}, rec, globals())

device = t.device("cpu")
train_loader, test_loader = load_datasets_from_json(
    model=None, path=DATASET_PATH, device=device, prepend_bos=False,
    batch_size=16, train_test_size=(32, 32),
)
batch = next(iter(test_loader))

for split_inputs in (True, False):
    tag = "split_qkv_flag_on" if split_inputs else "split_qkv_flag_off"
    tl_model = toy_model()
    tl_model.cfg.use_split_qkv_input = split_inputs
    model = patchable_model(tl_model, factorized=True, slice_output="last_seq", separate_qkv=False,
                            device=device)
    with rec.step(f"{tag}: graph"):
        rec.text(f"{tag}.n_edges", model.n_edges)
    with rec.step(f"{tag}: every edge patched"):
        with t.inference_mode():
            clean = model(batch.clean)[model.out_slice]
            corrupt = model(batch.corrupt)[model.out_slice]
        ablations = src_ablations(model, batch.corrupt, AblationType.RESAMPLE)
        set_all_masks(model, 1.0)
        with patch_mode(model, ablations), t.inference_mode():
            patched = model(batch.clean)[model.out_slice]
        set_all_masks(model, 0.0)
        rec.num(f"{tag}.all_patched.max_abs_diff_to_corrupt", (patched - corrupt).abs().max())
        rec.num(f"{tag}.all_patched.max_abs_diff_to_clean", (patched - clean).abs().max())
    with rec.step(f"{tag}: only head inputs patched"):
        heads = [e for e in model.edges if e.dest.name.startswith("A")]
        with patch_mode(model, ablations, heads), t.inference_mode():
            patched = model(batch.clean)[model.out_slice]
        set_all_masks(model, 0.0)
        rec.num(f"{tag}.head_inputs_patched.max_abs_diff_to_clean", (patched - clean).abs().max())
    with rec.step(f"{tag}: EAP"):
        eap = mask_gradient_prune_scores(model=model, dataloader=train_loader, official_edges=None,
                                         grad_function="logit", answer_function="avg_diff", mask_val=0.0)
        rec.scores(f"{tag}.eap", model, eap)
    with rec.step(f"{tag}: run_circuits"):
        outs = run_circuits(model=model, dataloader=test_loader, test_edge_counts=[0, 5, 20, model.n_edges],
                            prune_scores=eap, patch_type=PatchType.TREE_PATCH,
                            ablation_type=AblationType.RESAMPLE)
        rec.measurements(f"{tag}.tree.logit_diff", measure_answer_diff(model, test_loader, outs))

rec.dump()
