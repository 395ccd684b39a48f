"""ACDC (Conmy et al. 2023, "Towards Automated Circuit Discovery for Mechanistic
Interpretability") as prune scores: the score of an edge is the smallest threshold
``tau`` at which ACDC removed it.

The search is sequential, but almost all of its cost can be shared or skipped without
changing a single decision:

- **Reuse upstream.** Edges are visited from the output back to the input, so while the
  input edges of a destination in block ``b`` are tested, every destination in blocks
  ``< b`` still has all its masks at 0: everything before block ``b`` is the clean
  model. Its residual stream and source outputs are computed once, and each test runs
  only blocks ``b ..`` (``HookedTransformer``'s ``start_at_layer``), and the unembedding
  only at the output positions. Where every prompt pair agrees on a prefix (every
  source's patch equals its clean output there), a causal model computes those positions
  as in the clean run whatever the masks: tests compute only the positions after it,
  attending to the prefix's clean keys and values (the progress line shows
  ``positions=computed/all``). A check against the full model
  at setup falls back to full forward passes if any of this does not reproduce it.
  ``TransformerBridge`` passes start mid-model by calling the bridge's own blocks with
  the inputs recorded in the clean run (:mod:`edgewise.models.bridge_blocks`), and skip
  the prefix by handing each attention module the prefix's clean keys and values.
- **Speculation.** The next ``k`` candidate edges of the current destination are tested
  in one forward pass over ``k`` stacked copies of the batch, copy ``j`` with candidates
  ``0 .. j`` ablated (it assumes the ones before it were removed). Results are accepted
  in order; after the first kept edge the rest are recomputed.
- **Sharing across taus.** All thresholds start in one group. A group holds the taus
  whose searches made identical decisions so far and shares one state; it splits when a
  loss increase falls between its taus (the taus above it remove the edge, the others
  keep it), so each distinct search state is evaluated once. The states are
  independent, so one forward pass tests the next candidates of all of them (as many as
  fit in its stacked copies), and each decides exactly as it would alone.

Every pass runs through the patching engine (:mod:`edgewise.patching.engine`:
``clean_run`` and ``patched_outputs`` with ``start=``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from edgewise.checks import require_real
from edgewise.data import (
    PromptDataLoader,
    PromptPairBatch,
    batch_key,
    check_batches_for_model,
    require_batches,
    require_full_prompts,
    warn_if_uncorrupted,
)
from edgewise.data.checks import scoring_entry
from edgewise.io.files import load_checkpoint
from edgewise.patching import PatchableModel, engine
from edgewise.prune_algos.acdc.loss import (
    FaithfulnessTarget,
    _circuit_scores,
    _ReferenceCheck,
    _StepLoss,
    faithfulness_loss,
)
from edgewise.prune_algos.acdc.search import (
    _choose_threads,
    _FastEvaluator,
    _Group,
    _PlainEvaluator,
    _search_destination,
    _Speculation,
    _time_copies,
)
from edgewise.prune_algos.acdc.state import _CHECKPOINT_VERSION, _restore, _save_checkpoint, _state
from edgewise.prune_algos.mask_gradient import first_nonfinite_source
from edgewise.runtime.distributed import from_rank_zero, gather_all, rank_and_world, sum_over_ranks
from edgewise.types import CircuitOutputs, DestNode, Edge, PruneScores

Method = Literal["fast", "plain"]

__all__ = [
    "FaithfulnessTarget",
    "acdc_prune_scores",
    "acdc_thresholds",
    "acdc_visit_order",
    "faithfulness_loss",
]


def acdc_visit_order(model: PatchableModel) -> list[tuple[DestNode, list[Edge]]]:
    """The order in which ACDC tests edges: a list of (destination, its input edges).

    Destinations in reverse topological order (``reversed(model.dests)``: ``Resid End``,
    then per block from the last to the first: ``MLP b``, the value inputs of the heads
    from the last head to the first, then the key inputs, then the query inputs; with
    ``separate_qkv=False`` one input per head). Within one destination the edges go by
    token position from the last to the first (only with ``seq_len``), and within one
    position by source from the last to the first (descending ``src_idx``: later blocks'
    MLP and heads first, ``Resid Start`` last).
    """
    by_dest: dict[int, list[Edge]] = {}
    for e in model.edges:
        by_dest.setdefault(e.dest.dest_idx, []).append(e)
    order = []
    for d in reversed(model.dests):
        edges = sorted(
            by_dest.get(d.dest_idx, []),
            key=lambda e: (-(e.seq_idx if e.seq_idx is not None else 0), -e.src.src_idx),
        )
        order.append((d, edges))
    return order


# ---------------------------------------------------------------------------- main
def acdc_thresholds(tao_exps: Sequence[int], tao_bases: Sequence[float]) -> list[float]:
    """The distinct thresholds ``base * 10 ** exp``, ascending; a ``ValueError`` naming
    ``tao_exps``/``tao_bases`` unless each is a non-empty list of numbers giving positive,
    finite thresholds (``TypeError`` for non-numbers)."""
    for name, values in (("tao_exps", tao_exps), ("tao_bases", tao_bases)):
        try:
            values = list(values)
        except TypeError:
            raise TypeError(f"{name} must be a list of numbers, got {values!r}") from None
        if not values:
            raise ValueError(f"{name} is empty; it must be a non-empty list (ACDC needs a threshold)")
        for v in values:
            require_real(v, name)
    taus = set()
    for e in tao_exps:
        for b in tao_bases:
            try:
                tau = float(b * 10.0**e)
            except OverflowError:
                tau = math.inf
            if not (tau > 0 and math.isfinite(tau)):
                raise ValueError(
                    f"the threshold {b} * 10**{e} (tao_bases x tao_exps) is {tau}, not a positive "
                    "finite number; thresholds are compared with increases of a KL divergence, so "
                    "use positive tao_bases and tao_exps around -6..0 (the default is -5..-2)"
                )
            taus.add(tau)
    return sorted(taus)


@scoring_entry
def acdc_prune_scores(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    official_edges: set[Edge] | None,
    tao_exps: list[int] = list(range(-5, -1)),  # noqa: B006, B008 (documented default)
    tao_bases: list[int] = [1, 3, 5, 7, 9],  # noqa: B006 (documented default)
    faithfulness_target: FaithfulnessTarget = "kl_div",
    test_mode: bool = False,
    run_circuits_ref: Callable[..., CircuitOutputs] | None = None,
    show_graphs: bool = False,
    draw_seq_graph_ref: Callable[..., Any] | None = None,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    speculation: int | None = None,
    progress: bool = True,
    method: Method = "fast",
) -> PruneScores:
    """Run ACDC (Conmy et al. 2023) once per threshold ``tau`` and score every edge by
    the smallest ``tau`` at which it was pruned.

    Only the first batch of ``dataloader`` is used. For every
    ``tau = base * 10 ** exp`` (each pair of ``tao_bases`` and ``tao_exps``; the distinct
    values are searched, conceptually in ascending order — the result does not depend on
    the order):

    1. Start from the full model (every mask 0) with resample ablation: an ablated edge
       carries its source's output on the batch's corrupt prompt
       (``model.src_outs(batch.corrupt)``). ``prev = 0``.
    2. Visit every edge once, in the order of :func:`acdc_visit_order`: destinations from
       the output back to the input (``reversed(model.dests)``); within one destination,
       token positions from last to first (with ``seq_len``), and within a position
       sources by descending ``src_idx``.
    3. Ablate the edge (mask 1) and compute the loss of the current circuit against the
       clean full model (``model(batch.clean)[model.out_slice]``) with
       :func:`faithfulness_loss`: ``kl_div`` is KL(full model || circuit) of the softmax
       distributions, mean over batch and output positions; ``mse`` is the mean squared
       error of the outputs. Losses are computed in float64. If ``loss - prev < tau``
       the edge stays ablated and ``prev = loss``; otherwise it is restored (a NaN loss
       restores it).
    4. Every edge ablated at the end of the run gets score ``min(score, tau)``.

    Edges no run ablated keep ``+inf`` (the most important). Edges with equal scores form
    groups, so ``run_circuits`` with ``edge_counts_util(..., EdgeCounts.GROUPS)`` evaluates
    circuits of every edge scored above each tau. That is exactly the circuit the
    ``tau`` run found whenever the circuits are nested (a larger tau keeps a subset of
    what a smaller one keeps), as they usually are; ACDC does not guarantee it.

    The fast path (``method="fast"``) reuses the clean model upstream of the destination
    under test, tests ``speculation`` candidate edges per forward pass and shares search
    states between taus (see the module docstring). Its decisions are those of the plain
    sequential search: the losses of the two agree to floating-point rounding, so a
    decision could only differ if ``loss - prev`` lay within rounding error of ``tau``.

    Under ``torch.distributed`` (e.g. ``torchrun --nproc-per-node N``; every process
    passes the same arguments) the prompts of the first batch are split between the
    processes (process ``r`` takes prompts ``r, r + N, ...``; the batch needs at least
    ``N``). Each step's loss is the float64 sum of the per-prompt terms and their count,
    added up over the processes in rank order, so every process takes the same decisions
    and returns the same scores, those of one process up to rounding in the losses.

    Args:
        model: the patchable model.
        dataloader: prompt pairs; only the first batch is used (split between the
            processes under ``torch.distributed``).
        official_edges: not used (accepted for API compatibility).
        tao_exps: exponents of the thresholds.
        tao_bases: bases of the thresholds. Every ``tau`` must be positive.
        faithfulness_target: ``"kl_div"`` or ``"mse"``.
        test_mode: check the output and loss of every tested circuit against a full,
            independent recomputation through ``run_circuits_ref`` (slow: one reference
            pass over the dataloader per tested edge); raises ``AssertionError`` on a
            difference beyond ``sqrt(eps)`` of the model's dtype (relative to the logits'
            scale).
        run_circuits_ref: the reference for ``test_mode`` (default
            :func:`edgewise.evaluation.circuits.run_circuits`); called as
            ``run_circuits_ref(model, dataloader, [size], prune_scores,
            patch_type=PatchType.TREE_PATCH, ablation_type=AblationType.RESAMPLE)`` with
            scores that are 1 on the circuit's edges and 0 elsewhere.
        show_graphs: after each tau's search, call
            ``draw_seq_graph_ref(model, prune_scores)`` with scores marking that circuit
            (1 in the circuit, 0 ablated); only on process 0 under ``torch.distributed``.
        draw_seq_graph_ref: the drawing function for ``show_graphs``, called as
            ``draw_seq_graph_ref(model, prune_scores)``; edgewise's own is
            :func:`edgewise.visualize.draw_seq_graph` (not a default, so that ACDC never
            imports matplotlib unasked).
        checkpoint: a file path. The search state is saved there atomically after every
            destination; a rerun with the same arguments resumes from it and returns
            identical scores. A checkpoint from other arguments raises ``ValueError``.
            Under ``torch.distributed`` only process 0 writes and reads it (and sends
            the state to the others); it resumes only with the same number of processes.
        speculation: how many candidate edges are tested per forward pass (>= 1); at
            most as many as fit a fixed memory budget for the stacked copies (1 GiB on
            CPU, 8 GiB on GPU). Default (``None``): measured. At setup a few passes time
            1, 2, 4, ... 32 stacked copies of the real batch on the real device, and
            each pass then uses the number that decides the most edges per second at
            the accept rate seen so far (see ``_Speculation``). The scores do not
            depend on it.
        progress: show a progress bar on process 0 (edges decided over all taus; the
            postfix shows the current circuit size, the number of distinct search states
            and forwards).
        method: ``"fast"``, or ``"plain"`` for one full patched forward pass
            (``model.run_patched``) per tested edge without speculation (same result;
            for benchmarks and checks).

    Returns:
        Destination module name -> float32 scores shaped like its mask.
    """
    require_full_prompts(dataloader, supported=False)  # its partial forwards skip the cache
    del official_edges
    if faithfulness_target not in ("kl_div", "mse"):
        raise ValueError(
            f"faithfulness_target must be 'kl_div' or 'mse', got {faithfulness_target!r}"
        )
    if method not in ("fast", "plain"):
        raise ValueError(f"method must be 'fast' or 'plain', got {method!r}")
    if speculation is not None and (
        isinstance(speculation, bool) or not isinstance(speculation, int) or speculation < 1
    ):
        raise ValueError(f"speculation must be an int >= 1, got {speculation!r}")
    if show_graphs and draw_seq_graph_ref is None:
        raise ValueError(
            "show_graphs=True needs a drawing function: pass draw_seq_graph_ref, called as "
            "draw_seq_graph_ref(model, prune_scores), e.g. edgewise.visualize.draw_seq_graph"
        )
    taus = acdc_thresholds(tao_exps, tao_bases)
    if getattr(dataloader, "kv_cache", None) is not None:
        raise NotImplementedError(
            "acdc_prune_scores runs whole prompts and does not use a dataloader's kv_cache prefix"
        )
    require_batches(dataloader, "acdc_prune_scores")
    batch = next(iter(dataloader))
    check_batches_for_model(model, [batch], "acdc_prune_scores")
    warn_if_uncorrupted([batch], "acdc_prune_scores")
    if test_mode and run_circuits_ref is None:
        from edgewise.evaluation.circuits import run_circuits

        run_circuits_ref = run_circuits

    device = model.device
    # Data parallel under torch.distributed: process r searches on prompts r, r + world, ...
    # of the batch; the losses are summed over the processes (_StepLoss), so every process
    # takes the same decisions.
    rank, world = rank_and_world()
    rows = slice(rank, None, world) if world > 1 else None
    if rows is not None:
        _check_same_batch(batch, world)
    clean = batch.clean.to(device) if rows is None else batch.clean[rows].to(device)
    corrupt = batch.corrupt.to(device) if rows is None else batch.corrupt[rows].to(device)
    dtype = model.dtype
    patch = model.src_outs(corrupt)
    with torch.inference_mode():
        full = model.outputs(clean)
    # a NaN in the model makes every loss NaN, and ACDC keeps every edge (score +inf)
    for tokens, outs, what in ((clean, full, "output on the clean prompts"),
                               (corrupt, patch, "source outputs on the corrupt prompts")):  # fmt: skip
        if not bool(torch.isfinite(outs).all()):
            raise FloatingPointError(
                f"acdc_prune_scores: NaN or inf in the model's {what}, so every loss would be "
                f"NaN and every score +inf; {first_nonfinite_source(model, tokens)}. Check the "
                "model's weights and dtype (float16 overflows)."
            )

    order = acdc_visit_order(model)
    evaluator: _FastEvaluator | _PlainEvaluator
    if method == "plain":
        evaluator = _PlainEvaluator(model, clean, patch)
        spec = _Speculation(1)
    else:
        evaluator = _FastEvaluator(model, clean, patch, full)
        if rows is not None:  # one number of copies per pass, so the steps line up
            mine = torch.tensor([evaluator.max_copies], dtype=torch.int64, device=device)
            evaluator.max_copies = int(torch.cat(gather_all(mine)).min())
        # measured when first needed (not at all for a finished checkpoint); process 0's
        # times on every process, so all choose the same k at every step
        fast = evaluator
        spec = _Speculation(speculation, lambda: from_rank_zero(
            _time_copies(fast, model, order, dtype, device, len(taus))))
    # Positions before which every source's patch equals its clean output, in every
    # prompt: with causal attention no ablation changes anything there, so edges at those
    # positions are accepted without a forward pass, for every tau (the plain search
    # would compute the same loss again). Token-position graphs only; the fast path only.
    dead_until = 0
    if method == "fast" and model.seq_len is not None and model.adapter.is_causal:
        dead_until = engine.first_changed_position(evaluator.clean.delta)  # type: ignore[union-attr]
        if rows is not None:  # the same on every process
            dead_until = int(torch.cat(gather_all(torch.tensor([dead_until], device=device))).min())
    check = None
    if test_mode and run_circuits_ref is not None:
        full_batch = full
        if rows is not None:
            with torch.inference_mode():
                full_batch = model.outputs(batch.clean.to(device))
        check = _ReferenceCheck(
            model, dataloader, batch, full_batch, faithfulness_target, run_circuits_ref, rows
        )

    full_sum = full.double().sum()
    fingerprint = {
        "version": _CHECKPOINT_VERSION,
        "taus": taus,
        "target": faithfulness_target,
        "n_edges": model.n_edges,
        "seq_len": model.seq_len,
        "dests": len(order),
        "batch_key": int(batch.key),
        "dtype": str(dtype),
        "full_sum": float(full_sum if rows is None else sum_over_ranks(full_sum[None])[0]),
    }
    if rows is not None:  # sums differ in rounding between numbers of processes
        fingerprint["processes"] = world
    groups = [_Group(tuple(taus), model.new_masks(0.0, dtype=dtype), 0.0)]
    first = 0
    n_forwards = 0
    if checkpoint is not None:  # process 0 reads it and hands it to the others
        path = os.fspath(checkpoint)
        state = None
        if rank == 0 and os.path.exists(path):
            state = load_checkpoint(path, "delete it (or pass --fresh) to start over")
        state = from_rank_zero(state)
        if state is not None:
            first, groups, n_forwards = _restore(state, path, fingerprint, dtype, device)

    total = model.n_edges * len(taus)
    done = sum(len(edges) for _, edges in order[:first]) * len(taus)
    bar = tqdm(
        total=total, initial=done, desc="ACDC", disable=not progress or rank != 0, unit="edge"
    )
    counter = [n_forwards, 0]  # forward passes, edges accepted untested
    step_loss = _StepLoss(full, faithfulness_target, world)
    threads = torch.get_num_threads()
    try:
        if method == "fast" and first < len(order):  # 1 thread on a busy machine
            _choose_threads(evaluator, model, order, dtype, device)  # type: ignore[arg-type]
        for i in range(first, len(order)):
            node, edges = order[i]
            new_groups = _search_destination(groups, node, edges, evaluator, step_loss, spec, check,
                                             bar, counter, model.n_edges, dead_until)  # fmt: skip
            groups = sorted(new_groups, key=lambda g: g.taus[0])
            if checkpoint is not None and rank == 0:
                _save_checkpoint(checkpoint, _state(fingerprint, i + 1, groups, counter[0]))
    finally:
        bar.close()
        torch.set_num_threads(threads)

    scores: PruneScores = {
        name: torch.full(m.mask_shape, math.inf, dtype=torch.float32, device=device)
        for name, m in model.dest_modules.items()
    }
    for g in groups:
        tau = torch.tensor(min(g.taus), dtype=torch.float32, device=device)
        for name, m in g.masks.items():
            scores[name] = torch.where(m != 0, torch.minimum(scores[name], tau), scores[name])
    if show_graphs and draw_seq_graph_ref is not None and rank == 0:
        for g in groups:
            for _ in g.taus:
                draw_seq_graph_ref(model, _circuit_scores(g.masks))
    return scores


def _check_same_batch(batch: PromptPairBatch, world: int) -> None:
    """Under ``torch.distributed``: raise ``ValueError`` on every process unless all of
    them got the same first batch with at least one prompt each."""

    mine = [batch_key(batch.clean, batch.corrupt)]  # of the tokens themselves
    rows = [p.tolist() for p in gather_all(torch.tensor(mine, dtype=torch.int64))]
    if any(r != rows[0] for r in rows):
        raise ValueError(
            "acdc_prune_scores under torch.distributed: the processes got different first "
            "batches; every process must pass the same dataloader (no per-process shuffling)"
        )
    n = int(batch.clean.shape[0])
    if n < world:
        raise ValueError(
            f"acdc_prune_scores under torch.distributed splits the prompts of the first batch "
            f"between the processes: it has {n} prompts, fewer than the {world} processes"
        )
