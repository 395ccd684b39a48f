"""ACDC's faithfulness loss (KL divergence or MSE to the full model), summed over
processes under ``torch.distributed``, and ``test_mode``'s check of every step against
``run_circuits``."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch

from edgewise.data import (
    PromptDataLoader,
    PromptPairBatch,
)
from edgewise.patching import PatchableModel
from edgewise.runtime.distributed import gather_all, sum_over_ranks
from edgewise.types import AblationType, CircuitOutputs, Edge, PatchType, PruneScores

FaithfulnessTarget = Literal["kl_div", "mse"]


def faithfulness_loss(
    circuit_out: torch.Tensor, full_out: torch.Tensor, target: FaithfulnessTarget
) -> torch.Tensor:
    """Loss of circuit outputs ``[k, batch, (pos,) vocab]`` against the full model's
    ``[batch, (pos,) vocab]``, one float64 value per copy ``k``.

    ``kl_div``: KL(full || circuit) of the softmax distributions, mean over batch and
    output positions. ``mse``: mean squared error of the outputs (mean over every element).
    """
    return _loss_terms(circuit_out, full_out, target).mean(dim=1)


def _loss_terms(
    circuit_out: torch.Tensor, full_out: torch.Tensor, target: FaithfulnessTarget
) -> torch.Tensor:
    """The float64 terms ``[k, n]`` whose mean over ``n`` is :func:`faithfulness_loss`:
    per prompt and output position (``kl_div``) or per output element (``mse``)."""
    circ = circuit_out.double()
    full = full_out.double().unsqueeze(0)
    if target == "kl_div":
        full_lp = torch.log_softmax(full, dim=-1)
        circ_lp = torch.log_softmax(circ, dim=-1)
        kl = (full_lp.exp() * (full_lp - circ_lp)).sum(dim=-1)
        return kl.flatten(1)
    if target == "mse":
        return ((circ - full) ** 2).flatten(1)
    raise ValueError(f"faithfulness_target must be 'kl_div' or 'mse', got {target!r}")


class _StepLoss:
    """The loss of each of ``k`` circuits on the searched batch, the same float on every
    process. Under ``torch.distributed`` each process holds some of the batch's prompts:
    their float64 loss sums and term counts are added up over the processes in rank order
    (:func:`edgewise.runtime.distributed.sum_over_ranks`), and the loss is sum / count, the mean
    over the whole batch as one process computes it, to float rounding."""

    def __init__(self, full: torch.Tensor, target: FaithfulnessTarget, world: int):
        self.full, self.target, self.world = full, target, world

    def __call__(self, out: torch.Tensor) -> list[float]:
        if self.world == 1:
            return faithfulness_loss(out, self.full, self.target).tolist()
        terms = _loss_terms(out, self.full, self.target)
        local = torch.cat([terms.sum(dim=1), terms.new_tensor([terms.shape[1]])])
        total = sum_over_ranks(local)
        return (total[:-1] / total[-1]).tolist()


def _tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance for comparing two computations of the same outputs."""
    return math.sqrt(torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-6


# ---------------------------------------------------------------------------- test mode
def _circuit_scores(masks: Mapping[str, torch.Tensor]) -> PruneScores:
    """Scores marking a circuit: 1 on edges in it (mask 0), 0 on ablated edges."""
    return {n: (m == 0).float() for n, m in masks.items()}


class _ReferenceCheck:
    """``test_mode``: recompute a circuit's output through ``run_circuits_ref`` and
    compare it with the fast path's."""

    def __init__(
        self,
        model: PatchableModel,
        dataloader: PromptDataLoader,
        batch: PromptPairBatch,
        full: torch.Tensor,
        target: FaithfulnessTarget,
        run_circuits_ref: Callable[..., CircuitOutputs],
        rows: slice | None = None,
    ):
        """``full``: the full model's output on the whole batch; ``rows``: the prompts of
        the batch this process searches on (under ``torch.distributed``), all if None."""
        self.model, self.dataloader, self.batch = model, dataloader, batch
        self.full, self.target, self.ref = full, target, run_circuits_ref
        self.rows = rows
        params = inspect.signature(run_circuits_ref).parameters
        self.kwargs: dict[str, Any] = {}
        if "progress" in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
            self.kwargs["progress"] = False
        self.tol = _tolerance(full.dtype)
        self.n_checks = 0

    def __call__(
        self,
        masks: Mapping[str, torch.Tensor],
        out: torch.Tensor,
        loss: float,
        edge: Edge,
        taus: Sequence[float],
    ) -> None:
        n_in = int(sum(int((m == 0).sum()) for m in masks.values()))
        outs = self.ref(
            self.model,
            self.dataloader,
            [n_in],
            _circuit_scores(masks),
            patch_type=PatchType.TREE_PATCH,
            ablation_type=AblationType.RESAMPLE,
            **self.kwargs,
        )
        by_batch = outs[n_in] if n_in in outs else next(iter(outs.values()))
        if self.batch.key not in by_batch:
            raise RuntimeError(
                "ACDC test_mode: run_circuits_ref returned no output for the batch ACDC searched "
                "on (its first batch); does the dataloader shuffle between passes?"
            )
        ref_out = by_batch[self.batch.key].to(out.device)
        ref_loss = float(faithfulness_loss(ref_out[None], self.full, self.target)[0])
        scale = 1.0 + float(ref_out.abs().max())
        mine = ref_out if self.rows is None else ref_out[self.rows]
        out_err = (out.double() - mine.double()).abs().max()
        if self.rows is not None:  # the largest over the processes, so all of them agree
            out_err = torch.stack(gather_all(out_err[None])).max()
        out_err = float(out_err)
        loss_err = abs(loss - ref_loss)
        self.n_checks += 1
        if out_err > self.tol * scale or loss_err > self.tol * (1.0 + abs(ref_loss)):
            raise AssertionError(
                f"ACDC test_mode: the fast path disagrees with run_circuits_ref while testing "
                f"{edge!r} (taus {list(taus)}, circuit of {n_in} edges): max output difference "
                f"{out_err:.3g} (tolerance {self.tol * scale:.3g}), loss {loss!r} vs reference "
                f"{ref_loss!r}"
            )
