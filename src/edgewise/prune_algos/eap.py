"""Edge attribution patching (Syed et al. 2023) under auto-circuit's name.

Score of edge ``(s, d)``: ``sum over batch and positions of
(d loss / d input_d) . (ablated_out_s - clean_out_s)``, the gradient of every edge's mask
at 0, all in one patched forward and one backward pass per batch
(:func:`~edgewise.prune_algos.mask_gradient.mask_gradient_prune_scores` at ``mask_val=0``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from edgewise.data import PromptDataLoader
from edgewise.data.checks import scoring_entry
from edgewise.patching.model import PatchableModel
from edgewise.prune_algos.grad_rules import GradRule
from edgewise.prune_algos.loss import AnswerFunction, GradFunction
from edgewise.prune_algos.mask_gradient import mask_gradient_prune_scores
from edgewise.types import AblationType, Edge, PruneScores


@scoring_entry
def edge_attribution_patching_prune_scores(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    official_edges: set[Edge] | None = None,
    grad_function: GradFunction = "logit",
    answer_function: AnswerFunction = "avg_diff",
    ablation_type: AblationType = AblationType.RESAMPLE,
    clean_corrupt: Literal["clean", "corrupt"] | None = "corrupt",
    progress: bool = True,
    grad_rules: Iterable[GradRule] | None = (),
) -> PruneScores:
    """Edge attribution patching: each edge's score is the gradient of the loss with
    respect to its mask at 0, shaped like the masks (``{dest module: [(seq,) (heads,)
    n_srcs]}``). On a graph with token positions every position gets its own term
    (auto-circuit 1.0.1 gives each the sum over the sequence). ``grad_rules``: gradient
    corrections (:mod:`edgewise.prune_algos.grad_rules`)."""
    return mask_gradient_prune_scores(
        model, dataloader, official_edges, grad_function, answer_function, mask_val=0.0,
        ablation_type=ablation_type, clean_corrupt=clean_corrupt, progress=progress,
        grad_rules=grad_rules,
    )  # fmt: skip
