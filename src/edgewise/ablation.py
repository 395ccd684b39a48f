"""Patch activations: what an ablated edge carries (``AblationType``)."""

from __future__ import annotations

from typing import Literal

import torch

from edgewise.data import PromptDataLoader, PromptPairBatch
from edgewise.patching import PatchableModel
from edgewise.types import AblationType, BatchKey

CleanCorrupt = Literal["clean", "corrupt"]


def src_ablations(
    model: PatchableModel,
    sample: torch.Tensor | PromptDataLoader,
    ablation_type: AblationType = AblationType.RESAMPLE,
) -> torch.Tensor:
    """Patch activations for every source, ``[n_srcs, batch | 1, seq | 1, d_model]``.

    Args:
        sample: tokens ``[batch, seq]`` for ``RESAMPLE`` (their source outputs), ``ZERO``
            and the batch means; a dataloader for the token-wise dataset means.
        ablation_type: see :class:`AblationType`. ``BATCH_TOKENWISE_MEAN`` averages over
            the batch per position, ``BATCH_ALL_TOK_MEAN`` over batch and positions,
            ``TOKENWISE_MEAN_*`` over every prompt of the dataset per position (all
            prompts must share one length).
    """
    if ablation_type.mean_over_dataset:
        if not isinstance(sample, PromptDataLoader):
            raise TypeError(f"{ablation_type} averages over a dataset: pass the PromptDataLoader")
        total: torch.Tensor | None = None
        count = 0
        for batch in sample:
            inputs = []
            if ablation_type.clean_dataset:
                inputs.append(batch.clean)
            if ablation_type.corrupt_dataset:
                inputs.append(batch.corrupt)
            for tokens in inputs:
                outs = model.src_outs(tokens).double().sum(dim=1, keepdim=True)
                if total is not None and outs.shape != total.shape:
                    raise ValueError(
                        "token-wise mean ablation needs every prompt to have the same length; "
                        "use BATCH_ALL_TOK_MEAN or ZERO for prompts of different lengths"
                    )
                total = outs if total is None else total + outs
                count += tokens.shape[0]
        if total is None:
            raise ValueError("the dataloader is empty")
        return (total / count).to(_dtype(model))
    if not isinstance(sample, torch.Tensor):
        raise TypeError(f"{ablation_type} needs a token tensor [batch, seq]")
    outs = model.src_outs(sample)
    if ablation_type == AblationType.RESAMPLE:
        return outs
    if ablation_type == AblationType.ZERO:
        return torch.zeros_like(outs[:, :1, :1])
    if ablation_type == AblationType.BATCH_TOKENWISE_MEAN:
        return outs.mean(dim=1, keepdim=True)
    if ablation_type == AblationType.BATCH_ALL_TOK_MEAN:
        return outs.mean(dim=(1, 2), keepdim=True)
    raise NotImplementedError(ablation_type)


def _dtype(model: PatchableModel) -> torch.dtype:
    return next(model.wrapped_model.parameters()).dtype


def batch_src_ablations(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    ablation_type: AblationType = AblationType.RESAMPLE,
    clean_corrupt: CleanCorrupt | None = "corrupt",
) -> dict[BatchKey, torch.Tensor]:
    """Patch activations for each batch of ``dataloader`` (batch key -> tensor).

    ``clean_corrupt`` picks which prompts the per-batch ablations (resample, zero, batch
    means) are computed from; dataset means ignore it.
    """
    if ablation_type.mean_over_dataset:
        mean = src_ablations(model, dataloader, ablation_type)
        return {batch.key: mean for batch in dataloader}
    return {
        batch.key: batch_ablation(model, batch, ablation_type, clean_corrupt)
        for batch in dataloader
    }


def batch_ablation(
    model: PatchableModel,
    batch: PromptPairBatch,
    ablation_type: AblationType,
    clean_corrupt: CleanCorrupt | None = "corrupt",
) -> torch.Tensor:
    """Patch activations for one batch (per-batch ablation types only)."""
    if clean_corrupt not in ("clean", "corrupt"):
        raise ValueError(f"clean_corrupt must be 'clean' or 'corrupt', got {clean_corrupt!r}")
    tokens = batch.clean if clean_corrupt == "clean" else batch.corrupt
    return src_ablations(model, tokens, ablation_type)
