"""Exact activation patching per edge: the true effect that edge attribution patching
approximates to first order.

The score of edge ``e`` is ``sum over batches of loss(e patched) - loss(nothing patched)``
with the same loss as :func:`~edgewise.prune_algos.mask_gradient.mask_gradient_prune_scores`
(so EAP's score is its linearisation at mask 0). Many edges are evaluated per forward
pass: the batch is repeated ``k`` times and copy ``j`` patches edge ``j`` alone
(stacked masks, :meth:`~edgewise.patching.model.PatchableModel.patch`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

import torch
from tqdm.auto import tqdm

from edgewise.checks import require_int
from edgewise.data import PromptDataLoader, checked_batches
from edgewise.data.checks import scoring_entry
from edgewise.io.files import FileFormatError, atomic_write, load_checkpoint
from edgewise.patching.model import PatchableModel
from edgewise.prune_algos.loss import (
    AnswerFunction,
    GradFunction,
    answer_loss,
    check_loss_functions,
    grad_values,
)
from edgewise.runtime.ablation import batch_src_ablations
from edgewise.types import AblationType, Edge, PruneScores

CleanCorrupt = str | None


@scoring_entry
def exact_patching_prune_scores(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    official_edges: set[Edge] | None = None,
    grad_function: GradFunction = "logit",
    answer_function: AnswerFunction = "avg_diff",
    ablation_type: AblationType = AblationType.RESAMPLE,
    clean_corrupt: CleanCorrupt = "corrupt",
    edges_per_pass: int | None = None,
    edges: Iterable[Edge] | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_seconds: float = 60.0,
) -> PruneScores:
    """Score every edge (or ``edges``) by patching it alone.

    Args:
        model: the patchable model.
        dataloader: clean / corrupt prompt pairs with answers.
        official_edges: unused (the common signature of scoring functions).
        grad_function, answer_function: the loss, as in ``mask_gradient_prune_scores``.
        ablation_type, clean_corrupt: what a patched edge carries.
        edges_per_pass: edges evaluated in one forward pass (the batch is repeated that
            many times); default 4 on a CPU, 32 elsewhere.
        edges: only these edges (the others score 0), e.g. a sample to check EAP against.
        progress: show a progress bar.
        checkpoint: a file path. The scores so far are saved there atomically at most
            every ``checkpoint_seconds`` and at the end; a run given an existing
            checkpoint of the same arguments, model and data resumes from it with
            identical scores. One from other arguments raises ``ValueError``.
        checkpoint_seconds: how often to save.

    Returns:
        Destination module name -> ``loss(edge patched) - loss(clean)`` summed over batches.
    """
    check_loss_functions(grad_function, answer_function)
    ablation_type = AblationType(ablation_type)
    if edges_per_pass is None:
        edges_per_pass = 4 if model.device.type == "cpu" else 32
    edges_per_pass = require_int(edges_per_pass, "edges_per_pass", 1)
    if ablation_type.mean_over_dataset:
        clean_corrupt = None
    checked_batches(model, dataloader, "exact_patching_prune_scores", answer_function,
                    ablation_type == AblationType.RESAMPLE and clean_corrupt == "corrupt")  # fmt: skip
    todo = list(model.edges if edges is None else edges)
    patches = batch_src_ablations(model, dataloader, ablation_type, clean_corrupt)  # type: ignore[arg-type]
    dtype = model.score_dtype
    scores = {n: torch.zeros(m.mask_shape, dtype=dtype, device=model.device)
              for n, m in model.dest_modules.items()}
    fingerprint = {
        "edges": [(e.name, e.seq_idx) for e in todo],
        "batches": [int(b.key) for b in dataloader],
        "loss": [grad_function, answer_function, str(ablation_type), str(clean_corrupt)],
        "dtype": str(dtype),
        "edges_per_pass": edges_per_pass,
    }
    done = 0  # chunks finished, counted over all batches
    if checkpoint is not None and os.path.exists(checkpoint):
        state = load_checkpoint(checkpoint, "delete it (or pass --fresh) to start over")
        if not isinstance(state, dict):
            raise FileFormatError(f"the checkpoint {checkpoint} holds a {type(state).__name__}, "
                                  "not edgewise's saved scores; delete it (or pass --fresh)")
        if state.get("fingerprint") != fingerprint:
            raise ValueError(f"the checkpoint {checkpoint} was written by a run with other "
                             "arguments, model or data; delete it or pass another path")
        try:
            done = int(state["done"])
            saved = {n: state["scores"][n] for n in scores}
            if any(tuple(t.shape) != tuple(scores[n].shape) for n, t in saved.items()):
                raise ValueError("scores of the wrong shape")
            scores = {n: t.to(device=model.device, dtype=dtype) for n, t in saved.items()}
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise FileFormatError(f"the checkpoint {checkpoint} lacks part of the saved scores "
                                  f"({type(e).__name__}: {str(e)[:80]}); delete it (or pass "
                                  "--fresh) to start over") from None

    def save(done: int) -> None:
        state = {"fingerprint": fingerprint, "done": done,
                 "scores": {n: t.cpu() for n, t in scores.items()}}
        atomic_write(checkpoint, lambda tmp: torch.save(state, tmp))  # type: ignore[arg-type]

    per_batch = -(-len(todo) // edges_per_pass)
    bar = tqdm(total=per_batch * len(dataloader), initial=done, desc="exact patching",
               disable=not progress)  # fmt: skip
    last = time.monotonic()
    with torch.inference_mode():
        for b_idx, batch in enumerate(dataloader):
            if (b_idx + 1) * per_batch <= done:
                continue
            patch = patches[batch.key]
            base = answer_loss(grad_values(model.outputs(batch.clean), grad_function),
                               batch, answer_function)  # fmt: skip
            for c_idx, i in enumerate(range(0, len(todo), edges_per_pass)):
                if b_idx * per_batch + c_idx < done:
                    continue
                chunk = todo[i : i + edges_per_pass]
                k = len(chunk)
                masks = {n: torch.zeros((k, *m.mask_shape), dtype=dtype, device=model.device)
                         for n, m in model.dest_modules.items()}  # fmt: skip
                for j, e in enumerate(chunk):
                    masks[e.dest.module_name][(j, *e.patch_idx)] = 1.0
                with model.patch(masks, patch):
                    out = model.outputs(batch.clean.repeat(k, 1))
                out = out.view(k, -1, *out.shape[1:])
                for j, e in enumerate(chunk):
                    vals = grad_values(out[j], grad_function)
                    loss = answer_loss(vals, batch, answer_function)
                    scores[e.dest.module_name][e.patch_idx] += (loss - base).to(dtype)
                done = b_idx * per_batch + c_idx + 1
                bar.update()
                if checkpoint is not None and time.monotonic() - last >= checkpoint_seconds:
                    save(done)
                    last = time.monotonic()
    bar.close()
    if checkpoint is not None:
        save(done)
    return scores
