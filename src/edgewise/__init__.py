"""edgewise: automated circuit discovery in transformer language models.

Everything a user calls is importable from here::

    from edgewise import patchable_model, mask_gradient_prune_scores, run_circuits
"""

from edgewise.ablation import batch_src_ablations, src_ablations
from edgewise.circuits import (
    EdgeCounts,
    circuit_edges,
    desc_prune_scores,
    edge_counts_util,
    flat_prune_scores,
    prune_scores_threshold,
    run_circuits,
)
from edgewise.compat import (
    ACDC_PRUNE_ALGO,
    ACT_MAG_PRUNE_ALGO,
    ANSWER_LOGIT_METRIC,
    ANSWER_LOGPROB_METRIC,
    ANSWER_PROB_METRIC,
    CLEAN_KL_DIV_METRIC,
    CORRECT_ANSWER_GREATER_THAN_INCORRECT_PERCENT_METRIC,
    CORRECT_ANSWER_PERCENT_METRIC,
    CORRUPT_KL_DIV_METRIC,
    EDGE_ATTR_PATCH_PRUNE_ALGO,
    GROUND_TRUTH_PRUNE_ALGO,
    INTEGRATED_EDGE_GRADS_LOGIT_DIFF_PRUNE_ALGO,
    INTEGRATED_EDGE_GRADS_PRUNE_ALGO,
    LOBPROB_DIFF_PERCENT_METRIC,
    LOGIT_DIFF_GRAD_PRUNE_ALGO,
    LOGIT_DIFF_METRIC,
    LOGIT_DIFF_PERCENT_METRIC,
    LOGIT_EXP_GRAD_PRUNE_ALGO,
    LOGIT_MSE_GRAD_PRUNE_ALGO,
    LOGPROB_DIFF_GRAD_PRUNE_ALGO,
    LOGPROB_DIFF_METRIC,
    LOGPROB_DIFF_PERCENT_METRIC,
    LOGPROB_GRAD_PRUNE_ALGO,
    MSE_ACDC_PRUNE_ALGO,
    PROB_DIFF_METRIC,
    PROB_DIFF_PERCENT_METRIC,
    PROB_GRAD_PRUNE_ALGO,
    PRUNE_ALGO_DICT,
    PRUNE_ALGOS,
    PRUNE_METRIC_DICT,
    PRUNE_METRICS,
    RANDOM_PRUNE_ALGO,
    SUBNETWORK_EDGE_PROBING_PRUNE_ALGO,
    SUBNETWORK_TREE_PROBING_PRUNE_ALGO,
    WRONG_ANSWER_LOGIT_METRIC,
    ExperimentTask,
    PruneAlgo,
    PruneMetric,
    TaskPruneScores,
    load_tl_model,
    measure_prune_metrics,
    patch_mode,
    run_prune_algos,
    set_all_masks,
    train_mask_mode,
)
from edgewise.data import (
    PromptDataLoader,
    PromptDataset,
    PromptPair,
    PromptPairBatch,
    load_dataset_json,
    load_datasets_from_json,
    save_dataset_json,
)
from edgewise.graph import Graph, GraphSpec, build_graph
from edgewise.io import load_mib_json, load_prune_scores, save_mib_json, save_prune_scores
from edgewise.metrics.answers import (
    batch_answer_diffs,
    batch_answer_vals,
    measure_all_answers_win_percent,
    measure_answer_diff,
    measure_answer_diff_percent,
    measure_answer_val,
    measure_correct_ans_percent,
    measure_kl_div,
    measure_logit_diff_percent,
    measure_mse,
)
from edgewise.metrics.faithfulness import (
    Roc,
    area_under_curve,
    cpr_cmd,
    faithfulness_curve,
    measure_roc,
    measurements_auc,
)
from edgewise.patching import PatchableModel, patchable_model
from edgewise.prune_algos import (
    ALGORITHMS,
    acdc_prune_scores,
    activation_magnitude_prune_scores,
    activation_norm_prune_scores,
    atp_star_prune_scores,
    circuit_probing_prune_scores,
    eap_ig_inputs_prune_scores,
    edge_attribution_patching_prune_scores,
    exact_patching_prune_scores,
    ground_truth_prune_scores,
    learned_mask_prune_scores,
    mask_gradient_prune_scores,
    random_prune_scores,
)
from edgewise.types import (
    AblationType,
    BatchKey,
    CircuitOutputs,
    DestNode,
    Edge,
    Node,
    PatchType,
    PruneScores,
    SrcNode,
)
from edgewise.visualize import draw_seq_graph

__version__ = "0.1.0"

__all__ = [
    "AblationType", "BatchKey", "CircuitOutputs", "DestNode", "Edge", "EdgeCounts", "Graph",
    "GraphSpec", "Node", "PatchType", "PatchableModel", "PromptDataLoader", "PromptDataset",
    "PromptPair", "PromptPairBatch", "PruneScores", "SrcNode", "batch_answer_diffs",
    "batch_answer_vals", "batch_src_ablations", "build_graph", "circuit_edges",
    "edge_attribution_patching_prune_scores", "edge_counts_util", "flat_prune_scores",
    "load_dataset_json", "load_datasets_from_json", "mask_gradient_prune_scores",
    "measure_answer_diff", "measure_answer_val", "measure_correct_ans_percent",
    "measure_kl_div", "measure_logit_diff_percent", "patchable_model", "run_circuits",
    "save_dataset_json", "src_ablations", "Roc", "area_under_curve", "cpr_cmd",
    "faithfulness_curve", "measure_roc", "load_mib_json", "load_prune_scores", "save_mib_json",
    "save_prune_scores", "measure_mse", "ALGORITHMS", "acdc_prune_scores",
    "exact_patching_prune_scores", "random_prune_scores", "activation_magnitude_prune_scores",
    "ground_truth_prune_scores", "eap_ig_inputs_prune_scores", "learned_mask_prune_scores",
    "circuit_probing_prune_scores", "atp_star_prune_scores", "activation_norm_prune_scores",
    "measure_all_answers_win_percent", "measure_answer_diff_percent", "measurements_auc",
    "desc_prune_scores", "prune_scores_threshold", "draw_seq_graph",
    # auto-circuit's names (edgewise.compat, docs/auto_circuit.md)
    "ExperimentTask", "PruneAlgo", "PruneMetric", "TaskPruneScores", "PRUNE_ALGOS",
    "PRUNE_ALGO_DICT", "PRUNE_METRICS", "PRUNE_METRIC_DICT", "load_tl_model",
    "measure_prune_metrics", "patch_mode", "run_prune_algos", "set_all_masks", "train_mask_mode",
    "ACDC_PRUNE_ALGO", "ACT_MAG_PRUNE_ALGO", "EDGE_ATTR_PATCH_PRUNE_ALGO", "GROUND_TRUTH_PRUNE_ALGO",
    "INTEGRATED_EDGE_GRADS_LOGIT_DIFF_PRUNE_ALGO", "INTEGRATED_EDGE_GRADS_PRUNE_ALGO",
    "LOGIT_DIFF_GRAD_PRUNE_ALGO", "LOGIT_EXP_GRAD_PRUNE_ALGO", "LOGIT_MSE_GRAD_PRUNE_ALGO",
    "LOGPROB_DIFF_GRAD_PRUNE_ALGO", "LOGPROB_GRAD_PRUNE_ALGO", "MSE_ACDC_PRUNE_ALGO",
    "PROB_GRAD_PRUNE_ALGO", "RANDOM_PRUNE_ALGO", "SUBNETWORK_EDGE_PROBING_PRUNE_ALGO",
    "SUBNETWORK_TREE_PROBING_PRUNE_ALGO", "ANSWER_LOGIT_METRIC", "ANSWER_LOGPROB_METRIC",
    "ANSWER_PROB_METRIC", "CLEAN_KL_DIV_METRIC", "CORRECT_ANSWER_GREATER_THAN_INCORRECT_PERCENT_METRIC",
    "CORRECT_ANSWER_PERCENT_METRIC", "CORRUPT_KL_DIV_METRIC", "LOBPROB_DIFF_PERCENT_METRIC",
    "LOGIT_DIFF_METRIC", "LOGIT_DIFF_PERCENT_METRIC", "LOGPROB_DIFF_METRIC",
    "LOGPROB_DIFF_PERCENT_METRIC", "PROB_DIFF_METRIC", "PROB_DIFF_PERCENT_METRIC",
    "WRONG_ANSWER_LOGIT_METRIC",
]
