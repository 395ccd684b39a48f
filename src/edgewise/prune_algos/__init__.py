"""Edge-scoring algorithms."""

from edgewise.prune_algos.eap import edge_attribution_patching_prune_scores
from edgewise.prune_algos.mask_gradient import mask_gradient_prune_scores

__all__ = ["edge_attribution_patching_prune_scores", "mask_gradient_prune_scores"]
