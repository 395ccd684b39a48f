"""Patch activations: what an ablated edge carries (``AblationType``)."""

from __future__ import annotations

from typing import Literal

import torch

from edgewise.data import PromptDataLoader, PromptPairBatch, require_full_prompts
from edgewise.data.checks import reiterable, scoring_entry
from edgewise.patching.model import PatchableModel
from edgewise.types import AblationType, BatchKey

CleanCorrupt = Literal["clean", "corrupt"]


@scoring_entry
def src_ablations(
    model: PatchableModel,
    sample: torch.Tensor | PromptDataLoader,
    ablation_type: AblationType = AblationType.RESAMPLE,
    src_block: tuple[int, int] | None = None,
    max_prompts: int | None = None,
) -> torch.Tensor:
    """Patch activations for every source, ``[n_srcs, batch | 1, seq | 1, d_model]``
    (sources ``lo..hi-1`` only with ``src_block=(lo, hi)``).

    Args:
        sample: tokens ``[batch, seq]`` for ``RESAMPLE`` (their source outputs), ``ZERO``
            and the batch means; a dataloader for the token-wise dataset means.
        ablation_type: see :class:`AblationType`. ``BATCH_TOKENWISE_MEAN`` averages over
            the batch per position, ``BATCH_ALL_TOK_MEAN`` over batch and positions,
            ``TOKENWISE_MEAN_*`` over every prompt of the dataset per position (all
            prompts must share one length).
        src_block: a block of sources (see :meth:`PatchableModel.src_blocks`).
        max_prompts: batch means over tokens ``[batch, seq]`` are accumulated from at most
            this many prompts at a time (bounded memory; the same mean).
    """
    ablation_type = AblationType(ablation_type)  # also "zero", "RESAMPLE", ...
    if ablation_type.mean_over_dataset:
        if isinstance(sample, torch.Tensor):
            raise TypeError(f"{ablation_type} averages over a dataset: pass the PromptDataLoader")
        sample = reiterable(sample, "src_ablations")
        total: torch.Tensor | None = None
        count = 0
        for batch in sample:
            inputs = []
            if ablation_type.clean_dataset:
                inputs.append(batch.clean)
            if ablation_type.corrupt_dataset:
                inputs.append(batch.corrupt)
            for tokens in inputs:
                outs = _summed_src_outs(model, tokens, src_block, max_prompts)
                if total is not None and outs.shape != total.shape:
                    raise ValueError(
                        "token-wise mean ablation needs every prompt to have the same length; "
                        "use BATCH_ALL_TOK_MEAN or ZERO for prompts of different lengths"
                    )
                total = outs if total is None else total + outs
                count += tokens.shape[0]
        if total is None:
            name = getattr(sample, "name", None) or "the dataloader"
            raise ValueError(f"{ablation_type} averages over {name}, which yields no batches")
        return (total / count).to(model.dtype)
    if not isinstance(sample, torch.Tensor):
        raise TypeError(f"{ablation_type} needs a token tensor [batch, seq]")
    n = sample.shape[0]
    if ablation_type == AblationType.ZERO:
        lo, hi = model.block_range(src_block)
        d, dtype = int(model.cfg.d_model), model.dtype
        return torch.zeros(hi - lo, 1, 1, d, dtype=dtype, device=model.device)
    if ablation_type.mean_over_batch and max_prompts is not None and max_prompts < n:
        mean = _summed_src_outs(model, sample, src_block, max_prompts) / n
        if ablation_type == AblationType.BATCH_ALL_TOK_MEAN:
            mean = mean.mean(dim=2, keepdim=True)
        return mean.to(model.dtype)
    outs = model.src_outs(sample, src_block)
    if ablation_type == AblationType.RESAMPLE:
        return outs
    if ablation_type == AblationType.BATCH_TOKENWISE_MEAN:
        return outs.mean(dim=1, keepdim=True)
    if ablation_type == AblationType.BATCH_ALL_TOK_MEAN:
        return outs.mean(dim=(1, 2), keepdim=True)
    raise NotImplementedError(ablation_type)


def _summed_src_outs(
    model: PatchableModel,
    tokens: torch.Tensor,
    src_block: tuple[int, int] | None,
    max_prompts: int | None,
) -> torch.Tensor:
    """Source outputs summed over the prompts, in float64: ``[n_srcs, 1, seq, d_model]``,
    from at most ``max_prompts`` prompts at a time."""
    step = max_prompts or tokens.shape[0]
    parts = (model.src_outs(tokens[i : i + step], src_block).double().sum(1, keepdim=True)
             for i in range(0, tokens.shape[0], step))  # fmt: skip
    return sum(parts)  # type: ignore[return-value]


@scoring_entry
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
    ablation_type = AblationType(ablation_type)
    require_full_prompts(dataloader, model, ablation_type)
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
    src_block: tuple[int, int] | None = None,
    max_prompts: int | None = None,
) -> torch.Tensor:
    """Patch activations for one batch (per-batch ablation types only); ``src_block``
    and ``max_prompts`` as in :func:`src_ablations`. ``clean_corrupt=None`` is accepted for
    zero ablation, which reads no prompt's activations (auto-circuit requires ``None`` there)."""
    if clean_corrupt is None and AblationType(ablation_type) == AblationType.ZERO:
        clean_corrupt = "clean"  # only the shape is used
    elif clean_corrupt is None:
        raise ValueError(
            f"clean_corrupt=None, but {AblationType(ablation_type)} ablation is computed from one side "
            "of each prompt pair: pass clean_corrupt='clean' or 'corrupt'"
        )
    if clean_corrupt not in ("clean", "corrupt"):
        raise ValueError(f"clean_corrupt must be 'clean' or 'corrupt', got {clean_corrupt!r}")
    tokens = batch.clean if clean_corrupt == "clean" else batch.corrupt
    return src_ablations(model, tokens, ablation_type, src_block, max_prompts)


def check_ablation_values(
    model: PatchableModel, values: torch.Tensor, ablation_type: AblationType
) -> torch.Tensor:
    """Fixed patch activations given instead of an ``ablation_type`` (for example
    :func:`~edgewise.prune_algos.optimal_ablation.optimal_ablation_values`): a tensor
    ``[n_srcs, 1, 1 | seq, d_model]``, the same for every prompt. Returned on the model's
    device; an error names what is wrong."""
    if AblationType(ablation_type) != AblationType.RESAMPLE:
        raise ValueError(
            f"ablation_values and ablation_type={AblationType(ablation_type).value!r} both say "
            "what ablated edges carry: pass one of them"
        )
    shape = tuple(values.shape) if isinstance(values, torch.Tensor) else None
    n, d = len(model.srcs), int(model.cfg.d_model)
    if shape is None or len(shape) != 4 or shape[0] != n or shape[1] != 1 or shape[3] != d:
        raise ValueError(
            f"ablation_values must be a tensor [n_srcs={n}, 1, 1 or seq, d_model={d}] (one "
            f"value per source, shared by every prompt), got {shape}"
        )
    if not bool(torch.isfinite(values).all()):
        raise ValueError("ablation_values holds NaN or infinite values")
    return values.to(model.device)

