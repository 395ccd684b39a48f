"""ACDC's search over one destination's input edges: the evaluators (plain: one full
patched pass per circuit; fast: ``k`` circuits per pass from a clean start), measured
speculation and the groups of taus that share a search state."""

from __future__ import annotations

import math
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
        self.max_copies = self._max_copies()

    @property
    def partial(self) -> bool:
        """Whether passes start at the destination's block (else full forward passes)."""
        return self.clean.partial

    @property
    def positions(self) -> str:
        """``computed/all``: the positions a pass computes (after the shared clean prefix)."""
        return f"{self.S - self.clean.skip}/{self.S}"

    def _max_copies(self) -> int:
        """How many copies of the batch one forward pass may stack: the largest per-copy
        buffers (the live source differences, the per-head inputs and, when it is used,
        TransformerLens' ``use_attn_result`` intermediate
        ``[batch, pos, heads, d_head, d_model]``, see ``SrcHook``) stay under
        ``_STACK_BUDGET_BYTES`` (a constant per device type, so runs repeat exactly)."""
        cfg = self.model.cfg
        item = self.clean.delta.element_size()
        d_model = int(cfg.d_model)
        per_token = len(self.model.srcs) * d_model
        if getattr(cfg, "use_attn_result", False):
            per_token += int(cfg.n_heads) * int(cfg.d_head) * d_model
        if any(dh.module.n_heads for dh in self.model.dest_hooks):
            per_token += 6 * int(cfg.n_heads) * d_model  # per-head inputs, normalised
        per_copy = self.B * (self.S - self.clean.skip) * per_token * item
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

    def k_for(self, states: int) -> int:
        """``k`` for each of ``states`` search states that share one pass of
        ``states * k`` copies: the most edges decided per second of that pass (its time
        taken as the measured time of the smallest measured pass at least that wide)."""
        if self.fixed is not None or states <= 1:
            return self.k
        p = min(self.p, 1 - 1e-6)
        times = self.times

        def rate(k: int) -> float:
            wide = [n for n in times if n >= states * k]
            return states * (1 - p**k) / (1 - p) / times[min(wide)] if wide else 0.0

        return max(sorted(times), key=rate)

    def widest(self, room: int) -> int:
        """How many copies a pass may have: ``room``, and no more than was measured."""
        return room if self.fixed is not None else max(1, min(room, max(self.times)))


def _choose_threads(evaluator: _FastEvaluator, model: PatchableModel, order: list,
                    dtype: torch.dtype, device: torch.device) -> int:  # fmt: skip
    """Set torch's CPU threads for the search: the current number or 1, whichever runs a
    one-candidate pass faster (best of 3 each, alternating), and return it.

    The search runs thousands of small passes one after another. On a machine busy with
    other jobs (more runnable threads than cores) every parallel region of such a pass
    waits for its slowest thread to be scheduled, so with 2 threads on 2 loaded cores a
    pass took 17x as long as with 1 (the same scores). On an idle machine the current
    number is kept unless 1 thread is faster. Only on the CPU; the caller restores the
    number after the search."""
    current = torch.get_num_threads()
    if device.type != "cpu" or current == 1:
        return current
    node = order[len(order) // 2][0]
    block = model.dest_modules[node.module_name].block
    masks = {name: torch.full(m.mask_shape, float(m.block > block or name == node.module_name),
                              dtype=dtype, device=device)
             for name, m in model.dest_modules.items()}  # fmt: skip
    cand = masks[node.module_name].unsqueeze(0)
    best = {current: math.inf, 1: math.inf}
    try:
        for n in (current, 1, current, 1, current, 1):
            torch.set_num_threads(n)
            start = time.perf_counter()
            evaluator.outputs(masks, node.module_name, cand)
            best[n] = min(best[n], time.perf_counter() - start)
    finally:
        torch.set_num_threads(current)
    chosen = 1 if best[1] < best[current] else current
    torch.set_num_threads(chosen)
    return chosen


def _time_copies(evaluator: _FastEvaluator, model: PatchableModel, order: list, dtype: torch.dtype,
                 device: torch.device, n_taus: int = 1) -> dict[int, float]:  # fmt: skip
    """Seconds of forward passes over ``k`` stacked candidates, for ``k`` = 1, 2, 4, ...
    up to 32 and ``evaluator.max_copies``: summed over destinations at a quarter, half
    and three quarters of the visit order (a pass's cost depends on where it starts),
    each the best of 2 timed passes (after a warm-up at ``k = 1``), with every edge
    downstream of the destination ablated (as most are during a search: circuits are
    small). Timing stays within a tenth of the search's time without speculation (one
    pass per edge and tau, an upper bound): where wide passes are slow (a compute-bound
    model) the doubling stops early, and wider passes are taken to cost the same per
    candidate as the widest timed one, so search states can still share them."""
    nodes = [order[int(len(order) * f)][0] for f in (0.25, 0.5, 0.75)]
    node_masks = []
    for node in nodes:
        block = model.dest_modules[node.module_name].block
        node_masks.append({name: torch.full(m.mask_shape, float(m.block > block or name == node.module_name),
                                            dtype=dtype, device=device)
                           for name, m in model.dest_modules.items()})  # fmt: skip
    times: dict[int, float] = {}
    spent = 0.0
    for k in (1, 2, 4, 8, 16, 32):
        if k > evaluator.max_copies:
            break
        times[k] = 0.0
        for node, masks in zip(nodes, node_masks):
            base = masks[node.module_name]
            cand = base.unsqueeze(0).repeat(k, *([1] * base.dim()))
            runs = []
            for _ in range(3 if k == 1 else 2):
                start = time.perf_counter()
                evaluator.outputs(masks, node.module_name, cand)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                runs.append(time.perf_counter() - start)
            spent += sum(runs)
            times[k] += min(runs[-2:])
        budget = 0.1 * len(model.edges) * n_taus * times[1] / len(nodes)
        if spent + 4 * times[k] > budget:  # the next width: 2 passes, each twice as wide
            wider = 2 * k
            while wider <= min(32, evaluator.max_copies):
                times[wider] = times[k] * wider / k
                wider *= 2
            break
    return times


def _search_destination(
    groups: list[_Group],
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
    """Test every input edge of ``node`` for the taus of every group; return the groups
    (split where the taus' decisions differ) after the destination. Edges at positions
    below ``dead_until`` change nothing when ablated and are accepted untested.

    The search states (groups, and the groups they split into) are independent, so one
    forward pass tests the next candidates of as many states as fit in its copies
    (``evaluator.max_copies``); each state then decides exactly as it would alone."""
    module = node.module_name
    pending: list[tuple[_Group, int]] = [(g, 0) for g in reversed(groups)]
    finished: list[_Group] = []
    while pending:
        room = speculation.widest(getattr(evaluator, "max_copies", 1))
        each = speculation.k_for(min(len(pending), room))
        tests: list[tuple[_Group, int, list[Edge], torch.Tensor]] = []  # state, i, edges, cand
        used = 0
        while pending and used < room:
            g, i = _skip_dead(pending.pop(), module, edges, dead_until, bar, counter)
            if i >= len(edges):
                finished.append(g)
                continue
            k = min(each, room - used, len(edges) - i)
            base = g.masks[module]
            cand = base.unsqueeze(0).repeat(k, *([1] * base.dim()))
            for j, e in enumerate(edges[i : i + k]):
                cand[(slice(j, None), *e.patch_idx)] = 1
            tests.append((g, i, edges[i : i + k], cand))
            used += k
        if not tests:
            continue
        masks, cand = _stacked(tests, module)
        out = evaluator.outputs(masks, module, cand)
        counter[0] += 1
        losses = step_loss(out)
        offset = 0
        for g, i, cands, cand in tests:
            k = len(cands)
            active = _decide(g, i, cands, cand, out[offset : offset + k], losses[offset : offset + k],
                             module, speculation, check, bar, pending)  # fmt: skip
            offset += k
        if bar.disable is False:
            cur = active if active is not None else (pending[-1][0] if pending else g)
            size = n_edges - int(sum(int(m.count_nonzero()) for m in cur.masks.values()))
            bar.set_postfix(
                circuit=size,
                states=len(pending) + len(finished),
                forwards=counter[0],
                skipped=counter[1],
                spec=each,
                **({"positions": evaluator.positions} if hasattr(evaluator, "positions") else {}),
                refresh=False,
            )
    return finished


def _skip_dead(state: tuple[_Group, int], module: str, edges: list[Edge], dead_until: int,
               bar: Any, counter: list[int]) -> tuple[_Group, int]:  # fmt: skip
    """Accept, untested, the state's next edges at positions below ``dead_until``."""
    g, i = state
    skip = i
    while skip < len(edges) and edges[skip].seq_idx is not None and edges[skip].seq_idx < dead_until:
        skip += 1
    if skip == i:
        return g, i
    m = g.masks[module].clone()  # ablated for every tau, the loss unchanged
    for e in edges[i:skip]:
        m[e.patch_idx] = 1
    bar.update((skip - i) * len(g.taus))
    counter[1] += skip - i
    return _Group(g.taus, {**g.masks, module: m}, g.prev), skip


def _stacked(tests: list[tuple[_Group, int, list[Edge], torch.Tensor]],
             module: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:  # fmt: skip
    """The masks of one pass over every state's candidates: a module's mask is shared
    where every state has the same tensor, else one per copy ``[copies, ...]``; and the
    candidates of ``module`` ``[copies, ...]``."""
    first = tests[0][0].masks
    masks: dict[str, torch.Tensor] = {}
    for name, m in first.items():
        if name == module or all(t[0].masks[name] is m for t in tests):
            masks[name] = m
        else:
            masks[name] = torch.cat([g.masks[name].expand(len(c), *m.shape) for g, _, c, _ in tests])
    cand = tests[0][3] if len(tests) == 1 else torch.cat([t[3] for t in tests])
    return masks, cand


def _decide(g: _Group, i: int, cands: list[Edge], cand: torch.Tensor, out: torch.Tensor,
            losses: list[float], module: str, speculation: _Speculation,
            check: _ReferenceCheck | None, bar: Any,
            pending: list[tuple[_Group, int]]) -> _Group | None:  # fmt: skip
    """Accept or reject a state's tested candidates in order, as the sequential search
    would; push the states that go on onto ``pending``; return the accepting one."""
    active: _Group | None = g
    for j, e in enumerate(cands):
        assert active is not None
        loss = losses[j]
        if check is not None:
            check({**active.masks, module: cand[j]}, out[j], loss, e, active.taus)
        diff = loss - active.prev
        accept = tuple(t for t in active.taus if diff < t)
        reject = tuple(t for t in active.taus if not diff < t)
        bar.update(len(active.taus))
        if reject:
            pending.append((_Group(reject, active.masks, active.prev), i + j + 1))
        if not accept:
            speculation.record(j + 1, stopped=True)
            return None
        active = _Group(accept, {**active.masks, module: cand[j]}, loss)
    pending.append((active, i + len(cands)))
    speculation.record(len(cands), stopped=False)
    return active
