"""ACDC's search over one destination's input edges: the evaluators (plain: one full
patched pass per circuit; fast: ``k`` circuits per pass from a clean start), measured
speculation and the groups of taus that share a search state."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from edgewise.patching import PatchableModel, engine
from edgewise.prune_algos.acdc.loss import _ReferenceCheck, _StepLoss
from edgewise.types import DestNode, Edge


# ---------------------------------------------------------------------------- evaluators
class _PlainEvaluator:
    """One full patched forward pass (``model.run_patched``) per circuit: the plain
    sequential search, for benchmarks and checks."""

    name = "plain"

    def __init__(self, model: PatchableModel, tokens: torch.Tensor, patch: torch.Tensor):
        self.model, self.tokens, self.patch = model, tokens, patch

    def outputs(
        self, masks: Mapping[str, torch.Tensor], module: str, cand: torch.Tensor
    ) -> torch.Tensor:
        outs = []
        for j in range(cand.shape[0]):
            m = dict(masks)
            m[module] = cand[j]
            with torch.inference_mode():
                outs.append(
                    self.model.run_patched(self.tokens, m, self.patch)[self.model.out_slice]
                )
        return torch.stack(outs)


class _FastEvaluator:
    """Patched forward passes of ``k`` circuits at once (the batch repeated ``k`` times,
    per-copy masks for the destination under test, the others shared), starting at the
    destination's block from the clean run when the model allows it (see
    :class:`~edgewise.patching.engine.CleanRun`): the search goes backwards, so every
    destination upstream of the one under test still has all its masks at 0."""

    name = "fast"

    def __init__(
        self,
        model: PatchableModel,
        tokens: torch.Tensor,
        patch: torch.Tensor,
        full_out: torch.Tensor,
        partial: bool | None = None,
    ):
        self.model = model
        self.tokens = tokens
        self.B, self.S = tokens.shape
        self.clean = engine.clean_run(model, tokens, patch, full_out, partial)
        self.partial = self.clean.partial
        self.delta_clean = self.clean.delta  # patch - clean: [n_srcs, B, S, d]
        self.max_copies = self._max_copies()

    def _max_copies(self) -> int:
        """How many copies of the batch one forward pass may stack: the largest per-copy
        buffers (the live source differences, the per-head inputs and, when it is used,
        TransformerLens' ``use_attn_result`` intermediate
        ``[batch, pos, heads, d_head, d_model]``, see ``SrcHook``) stay under
        ``_STACK_BUDGET_BYTES`` (a constant per device type, so runs repeat exactly)."""
        cfg = self.model.cfg
        item = self.delta_clean.element_size()
        d_model = int(cfg.d_model)
        per_token = len(self.model.srcs) * d_model
        if getattr(cfg, "use_attn_result", False):
            per_token += int(cfg.n_heads) * int(cfg.d_head) * d_model
        if any(dh.module.n_heads for dh in self.model.dest_hooks):
            per_token += 6 * int(cfg.n_heads) * d_model  # per-head inputs, normalised
        per_copy = self.B * self.S * per_token * item
        budget = _STACK_BUDGET_BYTES.get(self.tokens.device.type, _STACK_BUDGET_BYTES["cpu"])
        return max(1, budget // max(per_copy, 1))

    def outputs(
        self, masks: Mapping[str, torch.Tensor], module: str, cand: torch.Tensor
    ) -> torch.Tensor:
        """Outputs ``[k, B, ...]`` of the circuits given by ``masks`` with ``masks[module]``
        replaced by ``cand[j]`` for copy ``j``."""
        k = cand.shape[0]
        start = self.model.dest_modules[module].block if self.partial else None
        out = engine.patched_outputs(self.model, self.tokens.repeat(k, 1), {**masks, module: cand},
                                     self.clean.patch, clean=self.clean, start=start)  # fmt: skip
        return out.unflatten(0, (k, self.B))


_STACK_BUDGET_BYTES = {"cpu": 2**30, "cuda": 8 * 2**30}
"""Memory for the stacked copies of one speculative forward pass, per device type."""




@dataclass
class _Group:
    """Taus whose searches have made identical decisions so far, and their shared state:
    masks (1 = ablated; tensors are never modified in place, so groups share them) and
    the loss ``prev`` of the current circuit."""

    taus: tuple[float, ...]
    masks: dict[str, torch.Tensor]
    prev: float


class _Speculation:
    """How many candidate edges each forward pass tests.

    A pass over ``k`` stacked candidates decides edges until the first one that every
    tau of the state rejects (the candidates after it are tested again later). With
    ``p`` the chance that an edge is not rejected outright, a pass decides
    ``(1 - p**k) / (1 - p)`` edges on average, so the best ``k`` maximises that over the
    pass's time. The times per ``k`` are measured once at setup
    (:func:`_time_copies`); ``p`` is a running estimate from the search so far (starting
    at 0.8), so the choice follows the accept rate as it changes. A fixed ``k`` (the
    ``speculation`` argument) is used as it is. The scores never depend on ``k``."""

    def __init__(self, fixed: int | None, times: dict[int, float] | Callable[[], dict[int, float]] | None = None):
        self.fixed = fixed
        self._times = times or {1: 1.0}  # or a function measuring them, called on first use
        self.p = 0.8

    @property
    def times(self) -> dict[int, float]:
        if callable(self._times):
            self._times = self._times()
        return self._times

    def record(self, tested: int, stopped: bool) -> None:
        """A pass tested ``tested`` candidates; ``stopped``: the last was rejected outright."""
        for j in range(tested):
            self.p += 0.02 * ((0.0 if stopped and j == tested - 1 else 1.0) - self.p)

    @property
    def k(self) -> int:
        if self.fixed is not None:
            return self.fixed
        p = min(self.p, 1 - 1e-6)
        return max(self.times, key=lambda k: (1 - p**k) / (1 - p) / self.times[k])


def _time_copies(evaluator: _FastEvaluator, model: PatchableModel, order: list, dtype: torch.dtype,
                 device: torch.device) -> dict[int, float]:  # fmt: skip
    """Seconds of forward passes over ``k`` stacked candidates, for ``k`` = 1, 2, 4, ...
    up to 32 and ``evaluator.max_copies``: summed over destinations at a quarter, half
    and three quarters of the visit order (a pass's cost depends on where it starts),
    each the best of 2 timed passes after a warm-up, with every edge downstream of the
    destination ablated (as most are during a search: circuits are small)."""
    nodes = [order[int(len(order) * f)][0] for f in (0.25, 0.5, 0.75)]
    times: dict[int, float] = {}
    for k in (1, 2, 4, 8, 16, 32):
        if k > evaluator.max_copies:
            break
        times[k] = 0.0
        for node in nodes:
            block = model.dest_modules[node.module_name].block
            masks = {name: torch.full(m.mask_shape, float(m.block > block or name == node.module_name),
                                      dtype=dtype, device=device)
                     for name, m in model.dest_modules.items()}  # fmt: skip
            base = masks[node.module_name]
            cand = base.unsqueeze(0).repeat(k, *([1] * base.dim()))
            runs = []
            for _ in range(3):
                start = time.perf_counter()
                evaluator.outputs(masks, node.module_name, cand)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                runs.append(time.perf_counter() - start)
            times[k] += min(runs[1:])
    return times


def _search_destination(
    group: _Group,
    node: DestNode,
    edges: list[Edge],
    evaluator: _FastEvaluator | _PlainEvaluator,
    step_loss: _StepLoss,
    speculation: _Speculation,
    check: _ReferenceCheck | None,
    bar: Any,
    counter: list[int],
    n_edges: int,
    dead_until: int = 0,
) -> list[_Group]:
    """Test every input edge of ``node`` for the taus of ``group``; return the groups
    (split where the taus' decisions differ) after the destination. Edges at positions
    below ``dead_until`` change nothing when ablated and are accepted untested."""
    module = node.module_name
    pending: list[tuple[_Group, int]] = [(group, 0)]
    finished: list[_Group] = []
    while pending:
        g, i = pending.pop()
        skip = i
        while skip < len(edges) and edges[skip].seq_idx is not None and edges[skip].seq_idx < dead_until:
            skip += 1
        if skip > i:  # ablated for every tau, the loss unchanged
            m = g.masks[module].clone()
            for e in edges[i:skip]:
                m[e.patch_idx] = 1
            g = _Group(g.taus, {**g.masks, module: m}, g.prev)
            bar.update((skip - i) * len(g.taus))
            counter[1] += skip - i
            i = skip
        if i >= len(edges):
            finished.append(g)
            continue
        k = min(speculation.k, getattr(evaluator, "max_copies", 1), len(edges) - i)
        cands = edges[i : i + k]
        base = g.masks[module]
        cand = base.unsqueeze(0).repeat(k, *([1] * base.dim()))
        for j, e in enumerate(cands):
            cand[(slice(j, None), *e.patch_idx)] = 1
        out = evaluator.outputs(g.masks, module, cand)
        counter[0] += 1
        losses = step_loss(out)
        active: _Group | None = g
        for j, e in enumerate(cands):
            assert active is not None
            loss = losses[j]
            if check is not None:
                masks_j = dict(active.masks)
                masks_j[module] = cand[j]
                check(masks_j, out[j], loss, e, active.taus)
            diff = loss - active.prev
            accept = tuple(t for t in active.taus if diff < t)
            reject = tuple(t for t in active.taus if not diff < t)
            bar.update(len(active.taus))
            if reject:
                pending.append((_Group(reject, active.masks, active.prev), i + j + 1))
            if not accept:
                active = None
                speculation.record(j + 1, stopped=True)
                break
            masks = dict(active.masks)
            masks[module] = cand[j]
            active = _Group(accept, masks, loss)
        if active is not None:
            pending.append((active, i + k))
            speculation.record(k, stopped=False)
        if bar.disable is False:
            cur = active if active is not None else (pending[-1][0] if pending else g)
            size = n_edges - int(sum(int(m.count_nonzero()) for m in cur.masks.values()))
            bar.set_postfix(
                circuit=size,
                states=len(pending) + len(finished),
                forwards=counter[0],
                skipped=counter[1],
                spec=speculation.k,
                refresh=False,
            )
    return finished
