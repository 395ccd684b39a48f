"""Edge-scoring algorithms, and one registry of them (used by the command line)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgewise.prune_algos.acdc import acdc_prune_scores
from edgewise.prune_algos.atp_star import atp_star_prune_scores
from edgewise.prune_algos.baselines import (
    activation_magnitude_prune_scores,
    activation_norm_prune_scores,
    ground_truth_prune_scores,
    random_prune_scores,
)
from edgewise.prune_algos.clean_corrupted import clean_corrupted_prune_scores
from edgewise.prune_algos.eap import edge_attribution_patching_prune_scores
from edgewise.prune_algos.eap_ig import eap_ig_inputs_prune_scores
from edgewise.prune_algos.eap_ig_activations import eap_ig_activations_prune_scores
from edgewise.prune_algos.exact import exact_patching_prune_scores
from edgewise.prune_algos.grad_rules import GRAD_RULES, GradRule
from edgewise.prune_algos.learned_masks import (
    learned_mask_prune_scores,
    learned_mask_sizes_prune_scores,
)
from edgewise.prune_algos.mask_gradient import mask_gradient_prune_scores
from edgewise.prune_algos.optimal_ablation import optimal_ablation_values
from edgewise.prune_algos.subnetwork_probing import (
    circuit_probing_prune_scores,
    subnetwork_probing_prune_scores,
)


@dataclass(frozen=True)
class Algorithm:
    """A scoring function ``(model, dataloader, official_edges, **params) -> PruneScores``
    with its default parameters and what it supports, so that callers (the command line)
    need not inspect it: ``progress`` (a progress bar), ``max_memory`` (a memory budget),
    ``checkpoint`` (resumable from a checkpoint file), ``loss`` (takes ``grad_function``
    and ``answer_function``), ``faithfulness`` (takes ``faithfulness_target``),
    ``needs_official_edges`` (uses the task's official circuit).

    ``fixed_scale``: for a function without a ``scale`` parameter, how its scores are reduced
    over prompts: ``"sum"`` (a sum over batches of each batch's mean, like EAP's) or
    ``None`` (not a reduction over batches, e.g. ACDC's thresholds; never rescaled). A
    function with the parameter has it in ``defaults``: the MIB methods ``"mean"``, the
    auto-circuit ones ``"sum"`` (:mod:`edgewise.io.scale`)."""

    name: str
    function: Callable[..., Any]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    progress: bool = True
    max_memory: bool = False
    checkpoint: bool = False
    loss: bool = False
    faithfulness: bool = False
    needs_official_edges: bool = False
    fixed_scale: str | None = None

    @property
    def takes_scale(self) -> bool:
        """Whether the function takes a ``scale`` parameter (``"sum"`` or ``"mean"``)."""
        return "scale" in self.defaults

    def score_scale(self, params: dict[str, Any] | None = None) -> str | None:
        """The scale of the scores a call with ``params`` gives: ``"sum"``, ``"mean"`` or
        ``None`` (scores that are not reduced over batches)."""
        if self.takes_scale:
            return {**self.defaults, **(params or {})}["scale"]
        return self.fixed_scale

    def __call__(self, model: Any, dataloader: Any, official_edges: Any = None, **params: Any) -> Any:
        return self.function(model, dataloader, official_edges, **{**self.defaults, **params})


ALGORITHMS: dict[str, Algorithm] = {
    "eap": Algorithm(
        "eap", mask_gradient_prune_scores,
        {"grad_function": "logit", "answer_function": "avg_diff", "mask_val": 0.0,
         "scale": "sum"},
        "edge attribution patching: one forward and one backward pass (Syed et al. 2023)",
        max_memory=True, loss=True,
    ),
    "ig": Algorithm(
        "ig", mask_gradient_prune_scores,
        {"grad_function": "logit", "answer_function": "avg_diff", "integrated_grad_samples": 10,
         "scale": "sum"},
        "integrated gradients over all masks from clean (0) to ablated (1)",
        max_memory=True, loss=True,
    ),
    "ig-layer": Algorithm(
        "ig-layer", mask_gradient_prune_scores,
        {"grad_function": "logit", "answer_function": "avg_diff", "integrated_grad_samples": 10,
         "integrated_grad_mode": "layer", "scale": "sum"},
        "integrated gradients, one destination layer's masks at a time",
        max_memory=True, loss=True,
    ),
    "acdc": Algorithm(
        "acdc", acdc_prune_scores, {"tao_exps": [-5, -4, -3, -2], "tao_bases": [1, 3, 5, 7, 9]},
        "ACDC (Conmy et al. 2023): greedy pruning per threshold, exact fast search",
        checkpoint=True, faithfulness=True,
    ),
    "eap-ig-inputs": Algorithm(
        "eap-ig-inputs", eap_ig_inputs_prune_scores,
        {"grad_function": "logit", "answer_function": "avg_diff", "integrated_grad_samples": 5,
         "endpoint": "corrupt", "scale": "mean"},
        "EAP-IG: gradients averaged along corrupt -> clean input embeddings (Hanna et al. 2024); "
        "MIB's points k = 0..m-1 and scale",
        loss=True,
    ),
    "eap-ig-activations": Algorithm(
        "eap-ig-activations", eap_ig_activations_prune_scores,
        {"grad_function": "logit", "answer_function": "avg_diff", "integrated_grad_samples": 5,
         "scale": "mean"},
        "EAP-IG on activations: each module's output moved corrupt -> clean in turn (MIB)",
        loss=True,
    ),
    "clean-corrupted": Algorithm(
        "clean-corrupted", clean_corrupted_prune_scores,
        {"grad_function": "logit", "answer_function": "avg_diff", "scale": "mean"},
        "EAP with the gradient averaged over the clean and the corrupt run (MIB)",
        loss=True,
    ),
    "eap-frozen": Algorithm(
        "eap-frozen", mask_gradient_prune_scores,
        {"grad_function": "logit", "answer_function": "avg_diff", "mask_val": 0.0,
         "grad_rules": ("attention_pattern", "norm_scale"), "scale": "sum"},
        "EAP with norm scales and attention patterns constant in the backward pass (LRP's "
        "LN- and AH-rules; the norm rule needs a HookedTransformer)",
        max_memory=True, loss=True,
    ),
    "atp-star": Algorithm(
        "atp-star", atp_star_prune_scores,
        {"grad_function": "logit", "answer_function": "avg_diff", "qk_fix": True,
         "grad_drop": False},
        "AtP* for edges: exact attention patterns for Q/K edges (Kramar et al. 2024); GradDrop "
        "with --param atp-star.grad_drop=true",
        loss=True, fixed_scale="sum",
    ),
    "exact": Algorithm(
        "exact", exact_patching_prune_scores,
        {"grad_function": "logit", "answer_function": "avg_diff"},
        "exact activation patching of each edge alone (what EAP approximates)",
        checkpoint=True, loss=True,
    ),
    "sp": Algorithm(
        "sp", learned_mask_prune_scores, {"mask_fn": "hard_concrete", "epochs": 50},
        "subnetwork probing: learned hard-concrete edge masks with an L0 penalty",
    ),
    "sp-tree": Algorithm(
        "sp-tree", learned_mask_prune_scores, {"mask_fn": "hard_concrete", "epochs": 50,
                                               "tree": True},
        "subnetwork probing in tree mode: clean run, learns which edges to ablate",
    ),
    "circuit-probing": Algorithm(
        "circuit-probing", learned_mask_sizes_prune_scores, {"sizes": (10, 100, 1000)},
        "learned masks with a target size, once per size; smaller circuits rank first",
    ),
    "random": Algorithm("random", random_prune_scores, {"seed": 0}, "baseline: uniform random scores",
                        progress=False),
    "magnitude": Algorithm(
        "magnitude", activation_magnitude_prune_scores, {},
        "baseline (auto-circuit's): |signed mean| of each edge's source output on the clean prompts",
    ),
    "norm": Algorithm(
        "norm", activation_norm_prune_scores, {},
        "baseline: mean L2 norm of each edge's source output on the clean prompts",
    ),
    "ground-truth": Algorithm(
        "ground-truth", ground_truth_prune_scores, {},
        "baseline: 1 on the task's official circuit, 0 elsewhere",
        progress=False, needs_official_edges=True,
    ),
}

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "acdc_prune_scores",
    "activation_magnitude_prune_scores",
    "activation_norm_prune_scores",
    "atp_star_prune_scores",
    "learned_mask_sizes_prune_scores",
    "subnetwork_probing_prune_scores",
    "circuit_probing_prune_scores",
    "learned_mask_prune_scores",
    "eap_ig_inputs_prune_scores",
    "eap_ig_activations_prune_scores",
    "clean_corrupted_prune_scores",
    "GRAD_RULES",
    "optimal_ablation_values",
    "GradRule",
    "exact_patching_prune_scores",
    "ground_truth_prune_scores",
    "random_prune_scores",
    "edge_attribution_patching_prune_scores",
    "mask_gradient_prune_scores",
]
