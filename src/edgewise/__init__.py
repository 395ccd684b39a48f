"""edgewise: automated circuit discovery in transformer language models.

Everything a user calls is importable from here::

    from edgewise import patchable_model, mask_gradient_prune_scores, run_circuits

The names are imported when first used (PEP 562): ``import edgewise.cli`` and
``edgewise --help`` do not load torch or TransformerLens. The ``TYPE_CHECKING`` block
below is the table of where each name lives; :func:`__getattr__` reads it.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names and their modules; imported when first used (__getattr__ below)
    from edgewise.compat import (
        ACDC_PRUNE_ALGO,
        ACT_MAG_PRUNE_ALGO,
        ANSWER_LOGIT_METRIC,
        ANSWER_LOGPROB_METRIC,
        ANSWER_PROB_METRIC,
        CIRCUIT_PROBING_PRUNE_ALGO,
        CIRCUIT_TREE_PROBING_PRUNE_ALGO,
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
        MSE_CIRCUIT_TREE_PROBING_PRUNE_ALGO,
        MSE_SUBNETWORK_TREE_PROBING_PRUNE_ALGO,
        OPPOSITE_TREE_PROBING_PRUNE_ALGO,
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
        TASK_DICT,
        TASKS,
        TOY_IOI_COMPONENT_CIRCUIT_TASK,
        TRACR_REVERSE_TOKEN_CIRCUIT_TASK,
        TRACR_XPROPORTION_TOKEN_CIRCUIT_TASK,
        WRONG_ANSWER_LOGIT_METRIC,
        ExperimentTask,
        PruneAlgo,
        PruneMetric,
        Task,
        TaskPruneScores,
        load_tl_model,
        measure_prune_metrics,
        patch_mode,
        run_prune_algos,
        set_all_masks,
        train_mask_mode,
    )
    from edgewise.compat_ops import (
        algo_measurements_auc,
        batch_answer_diff_percents,
        batch_avg_answer_diff,
        batch_avg_answer_val,
        correct_answer_greater_than_incorrect_proportion,
        correct_answer_proportion,
        indices_vals,
        load_cache,
        metric_measurements_auc,
        multibatch_kl_div,
        save_cache,
        task_measurements_auc,
        vocab_avg_val,
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
    from edgewise.evaluation.bootstrap import (
        FaithfulnessIntervals,
        ScoreIntervals,
        bootstrap_faithfulness,
        bootstrap_scores,
    )
    from edgewise.evaluation.circuits import (
        EdgeCounts,
        circuit_edges,
        desc_prune_scores,
        edge_counts_util,
        flat_prune_scores,
        prune_scores_threshold,
        run_circuits,
    )
    from edgewise.evaluation.node_circuits import (
        NodeCircuit,
        node_circuit,
        node_circuit_sizes,
        run_node_circuits,
    )
    from edgewise.graph.build import Graph, GraphSpec, build_graph
    from edgewise.io.files import load_mib_json, load_prune_scores, save_mib_json, save_prune_scores
    from edgewise.io.provenance import ProvenanceError, ProvenanceWarning, weights_sha256
    from edgewise.io.scale import rescale_scores
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
    from edgewise.mib.data import MIB_TASKS, load_mib_task
    from edgewise.mib.demo import run_mib_demo
    from edgewise.mib.evaluate import (
        MIB_PERCENTAGES,
        MibResult,
        mib_circuit_sizes,
        mib_evaluate,
        mib_evaluate_circuits,
    )
    from edgewise.mib.models import MIB_MODELS, eap_memory
    from edgewise.mib.submission import (
        SubmissionError,
        export_circuits,
        export_importances,
        import_submission,
        validate_submission,
    )
    from edgewise.patching.model import PatchableModel
    from edgewise.patching.wrap import patchable_model
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
        learned_mask_sizes_prune_scores,
        mask_gradient_prune_scores,
        random_prune_scores,
        subnetwork_probing_prune_scores,
    )
    from edgewise.prune_algos.clean_corrupted import clean_corrupted_prune_scores
    from edgewise.prune_algos.eap_ig_activations import eap_ig_activations_prune_scores
    from edgewise.prune_algos.grad_rules import GRAD_RULES, GradRule
    from edgewise.prune_algos.node_attribution import node_attribution_scores
    from edgewise.prune_algos.optimal_ablation import optimal_ablation_values
    from edgewise.runtime.ablation import batch_src_ablations, src_ablations
    from edgewise.runtime.resolve import load_model
    from edgewise.types import (
        AblationType,
        BatchKey,
        CircuitOutputs,
        DestNode,
        Edge,
        Node,
        NodeLevel,
        NodeScores,
        PatchType,
        PruneScores,
        SrcNode,
    )
    from edgewise.visualize import draw_seq_graph

__version__ = "0.2.0"

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
    "circuit_probing_prune_scores", "learned_mask_sizes_prune_scores",
    "subnetwork_probing_prune_scores", "atp_star_prune_scores", "activation_norm_prune_scores",
    "measure_all_answers_win_percent", "measure_answer_diff_percent", "measurements_auc",
    "desc_prune_scores", "prune_scores_threshold", "draw_seq_graph",
    # MIB's circuit track: data, node and neuron levels, evaluation, submissions, stability
    "MIB_TASKS", "load_mib_task", "MIB_MODELS", "eap_memory", "MIB_PERCENTAGES", "MibResult",
    "mib_circuit_sizes", "mib_evaluate", "mib_evaluate_circuits", "SubmissionError",
    "export_circuits", "export_importances", "import_submission", "validate_submission",
    "NodeLevel", "NodeScores", "NodeCircuit", "node_circuit", "node_circuit_sizes",
    "run_node_circuits", "node_attribution_scores", "FaithfulnessIntervals", "ScoreIntervals",
    "bootstrap_faithfulness", "bootstrap_scores", "eap_ig_activations_prune_scores",
    "clean_corrupted_prune_scores", "optimal_ablation_values", "GRAD_RULES", "GradRule",
    "run_mib_demo", "rescale_scores",
    # a model by name (shipped, local folder, TransformerLens or hub) on a device, in a dtype
    "load_model",
    # where saved results come from (edgewise.io.provenance)
    "ProvenanceError", "ProvenanceWarning", "weights_sha256",
    # auto-circuit's names (edgewise.compat, docs/auto_circuit.md)
    "Task", "TASKS", "TASK_DICT", "TRACR_XPROPORTION_TOKEN_CIRCUIT_TASK",
    "TRACR_REVERSE_TOKEN_CIRCUIT_TASK", "TOY_IOI_COMPONENT_CIRCUIT_TASK", "ExperimentTask", "PruneAlgo", "PruneMetric", "TaskPruneScores", "PRUNE_ALGOS",
    "PRUNE_ALGO_DICT", "PRUNE_METRICS", "PRUNE_METRIC_DICT", "load_tl_model",
    "measure_prune_metrics", "patch_mode", "run_prune_algos", "set_all_masks", "train_mask_mode",
    "ACDC_PRUNE_ALGO", "ACT_MAG_PRUNE_ALGO", "EDGE_ATTR_PATCH_PRUNE_ALGO", "GROUND_TRUTH_PRUNE_ALGO",
    "INTEGRATED_EDGE_GRADS_LOGIT_DIFF_PRUNE_ALGO", "INTEGRATED_EDGE_GRADS_PRUNE_ALGO",
    "LOGIT_DIFF_GRAD_PRUNE_ALGO", "LOGIT_EXP_GRAD_PRUNE_ALGO", "LOGIT_MSE_GRAD_PRUNE_ALGO",
    "LOGPROB_DIFF_GRAD_PRUNE_ALGO", "LOGPROB_GRAD_PRUNE_ALGO", "MSE_ACDC_PRUNE_ALGO",
    "PROB_GRAD_PRUNE_ALGO", "RANDOM_PRUNE_ALGO", "SUBNETWORK_EDGE_PROBING_PRUNE_ALGO",
    "SUBNETWORK_TREE_PROBING_PRUNE_ALGO", "CIRCUIT_PROBING_PRUNE_ALGO", "CIRCUIT_TREE_PROBING_PRUNE_ALGO",
    "MSE_CIRCUIT_TREE_PROBING_PRUNE_ALGO", "MSE_SUBNETWORK_TREE_PROBING_PRUNE_ALGO",
    "OPPOSITE_TREE_PROBING_PRUNE_ALGO", "ANSWER_LOGIT_METRIC", "ANSWER_LOGPROB_METRIC",
    "ANSWER_PROB_METRIC", "CLEAN_KL_DIV_METRIC", "CORRECT_ANSWER_GREATER_THAN_INCORRECT_PERCENT_METRIC",
    "CORRECT_ANSWER_PERCENT_METRIC", "CORRUPT_KL_DIV_METRIC", "LOBPROB_DIFF_PERCENT_METRIC",
    "LOGIT_DIFF_METRIC", "LOGIT_DIFF_PERCENT_METRIC", "LOGPROB_DIFF_METRIC",
    "LOGPROB_DIFF_PERCENT_METRIC", "PROB_DIFF_METRIC", "PROB_DIFF_PERCENT_METRIC",
    "WRONG_ANSWER_LOGIT_METRIC",
    # auto-circuit's helpers (edgewise.compat_ops)
    "indices_vals", "vocab_avg_val", "batch_avg_answer_val", "batch_avg_answer_diff",
    "batch_answer_diff_percents", "correct_answer_proportion",
    "correct_answer_greater_than_incorrect_proportion", "multibatch_kl_div",
    "algo_measurements_auc", "task_measurements_auc", "metric_measurements_auc",
    "save_cache", "load_cache",
]


_WHERE: dict[str, tuple[str, str]] | None = None  # public name -> (module, attribute)


def _where() -> dict[str, tuple[str, str]]:
    """Where each public name lives, read from this file's ``TYPE_CHECKING`` imports."""
    global _WHERE
    if _WHERE is None:
        import ast
        from pathlib import Path

        tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
        block = next(n for n in tree.body if isinstance(n, ast.If)
                     and getattr(n.test, "id", None) == "TYPE_CHECKING")  # fmt: skip
        _WHERE = {a.asname or a.name: (n.module, a.name) for n in block.body
                  if isinstance(n, ast.ImportFrom) and n.module for a in n.names}  # fmt: skip
    return _WHERE


def __getattr__(name: str) -> Any:
    """Import a public name's module when the name is first used, and keep the name."""
    where = _where().get(name)
    if where is None:
        raise AttributeError(f"module 'edgewise' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(where[0]), where[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_where()})
