"""The scale of gradient-based scores: what they are reduced over prompts by, how to
convert between the two conventions, and how a scores file records it.

Every gradient-based algorithm computes, for each batch, the gradient of the batch's
*mean* loss and adds these up over batches. Two conventions follow:

``"sum"``
    that sum over batches: auto-circuit's contract, kept by
    :func:`~edgewise.prune_algos.mask_gradient.mask_gradient_prune_scores` and the
    registry's ``eap`` / ``ig`` / ``ig-layer`` / ``eap-frozen`` (and AtP*).
``"mean"``
    that sum divided by ``N``, the number of prompts scored: what MIB's reference code
    gives (hannamw/EAP-IG ``src/eap/attribute.py`` and ``attribute_node.py``: each batch's
    metric is a mean over the batch, ``metric_value.backward()`` adds its gradient, and
    the total is divided by ``total_items``, the number of prompts, at the end). It is
    the default of everything that carries a MIB method's name.

With batches of equal size ``B``, ``"mean"`` is the mean over prompts of each prompt's
attribution divided by ``B``; with a smaller last batch its prompts weigh more. Either
way ``mean == sum / N`` exactly, which is how :func:`rescale_scores` converts, so
rankings and therefore circuits (and MIB's CPR / CMD) are the same under both.

A scores file records its scale under :data:`SCALE_KEY` in its metadata (see
:func:`scale_metadata`), so ``edgewise mib export`` can write MIB's scale whatever
convention made the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch

Scale = Literal["sum", "mean"]
SCALES: tuple[str, ...] = ("sum", "mean")
SCALE_KEY = "score_scale"
"""The metadata key of a scores file holding ``{"scale": "sum" | "mean" | None,
"n_prompts": int}``."""


def check_scale(scale: Any) -> Scale:
    """``scale`` if it is ``"sum"`` or ``"mean"``, else a ``ValueError`` naming both."""
    if scale not in SCALES:
        raise ValueError(
            f"scale must be 'sum' (the sum over batches of each batch's mean, auto-circuit's) "
            f"or 'mean' (that sum divided by the number of prompts, MIB's), got {scale!r}"
        )
    return scale  # type: ignore[return-value]


def count_prompts(batches: Iterable[Any]) -> int:
    """The number of prompts in ``batches`` (each with ``clean`` ``[batch, seq]``)."""
    return sum(int(b.clean.shape[0]) for b in batches)


def apply_scale(
    scores: Mapping[str, torch.Tensor], scale: Scale, n_prompts: int
) -> dict[str, torch.Tensor]:
    """Scores summed over batches, in ``scale``: unchanged for ``"sum"``, divided by
    ``n_prompts`` for ``"mean"``."""
    return rescale_scores(scores, "sum", scale, n_prompts)


def rescale_scores(
    scores: Mapping[str, torch.Tensor], from_scale: Scale, to_scale: Scale, n_prompts: int
) -> dict[str, torch.Tensor]:
    """Scores (any dict of tensors) converted from ``from_scale`` to ``to_scale``:
    ``mean = sum / n_prompts``. A ``ValueError`` for an unknown scale or ``n_prompts < 1``."""
    check_scale(from_scale)
    check_scale(to_scale)
    if isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts < 1:
        raise ValueError(f"n_prompts must be a positive int (the prompts scored), got {n_prompts!r}")
    if from_scale == to_scale:
        return dict(scores)
    if to_scale == "mean":
        return {name: t / n_prompts for name, t in scores.items()}
    return {name: t * n_prompts for name, t in scores.items()}


def scale_metadata(scale: Scale | None, n_prompts: int) -> dict[str, Any]:
    """The entry a scores file keeps under :data:`SCALE_KEY`: the scale (``None`` for
    scores that are not reduced over batches, e.g. ACDC's thresholds) and the number of
    prompts scored."""
    if scale is not None:
        check_scale(scale)
    return {"scale": scale, "n_prompts": int(n_prompts)}


def saved_scale(meta: Mapping[str, Any], path: Any) -> tuple[Scale | None, int] | None:
    """The ``(scale, n_prompts)`` a scores file's metadata records, or ``None`` when it
    records none (files written before edgewise recorded it). A malformed record raises a
    ``ValueError`` naming ``path``."""
    entry = meta.get(SCALE_KEY)
    if entry is None:
        return None
    scale = entry.get("scale") if isinstance(entry, dict) else "?"
    n = entry.get("n_prompts") if isinstance(entry, dict) else None
    if (scale is not None and scale not in SCALES) or isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(
            f"{path} records the score scale {entry!r}, not {{'scale': 'sum' | 'mean' | null, "
            "'n_prompts': <positive int>}: recompute it (edgewise discover --fresh)"
        )
    return scale, n
