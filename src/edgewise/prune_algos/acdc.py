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
  only at the output positions. A check against the full model
  at setup falls back to full forward passes if any of this does not reproduce it.
  ``TransformerBridge`` cannot start mid-model (TransformerLens 3.9 raises
  ``NotImplementedError`` for ``start_at_layer``), so bridges run full forward passes.
- **Speculation.** The next ``k`` candidate edges of the current destination are tested
  in one forward pass over ``k`` stacked copies of the batch, copy ``j`` with candidates
  ``0 .. j`` ablated (it assumes the ones before it were removed). Results are accepted
  in order; after the first kept edge the rest are recomputed.
- **Sharing across taus.** All thresholds start in one group. A group holds the taus
  whose searches made identical decisions so far and shares one state; it splits when a
  loss increase falls between its taus (the taus above it remove the edge, the others
  keep it), so each distinct search state is evaluated once.
"""

from __future__ import annotations

import inspect
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
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
from edgewise.io.files import atomic_write, load_checkpoint
from edgewise.patching.model import PatchableModel
from edgewise.patching.sites import DestHook, SrcHook
from edgewise.prune_algos.mask_gradient import first_nonfinite_source
from edgewise.runtime.distributed import from_rank_zero, gather_all, rank_and_world, sum_over_ranks
from edgewise.types import AblationType, CircuitOutputs, DestNode, Edge, PatchType, PruneScores

FaithfulnessTarget = Literal["kl_div", "mse"]
Method = Literal["fast", "plain"]

_CHECKPOINT_VERSION = 1


# ---------------------------------------------------------------------------- order & loss
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
    per-copy masks for the destination under test), starting at the destination's block
    when the model allows it.

    Masks of every destination module other than ``module`` are shared by all copies.
    Every destination upstream of ``module``'s block has all-zero masks (the search goes
    backwards), so the residual stream entering that block and the outputs of every
    source before it are the clean run's, computed once here.
    """

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
        self.wm = model.wrapped_model
        self.tokens = tokens
        self.patch = patch
        self.B, self.S = tokens.shape
        self.graph = model.graph
        self.n_srcs = len(model.srcs)
        self.d_model = int(model.cfg.d_model)
        self.n_layers = int(model.cfg.n_layers)
        self.out_slice = model.out_slice
        # the block whose forward fires each hook (the embedding's: block 0's resid_pre)
        self.dest_block = {m.module_name: m.block for m in self.graph.dest_modules}
        self.src_block = {m.module_name: m.block or 0 for m in self.graph.src_modules}
        can_partial = model.adapter.runs_partial_forwards
        self.partial = can_partial if partial is None else (partial and can_partial)
        # First source whose hook fires in block >= b (sources are in topological order).
        self.n_fixed: dict[int, int] = {}
        for b in range(self.n_layers):
            los = [
                m.src_lo
                for m in self.graph.src_modules
                if self.src_block[m.module_name] >= b
            ]
            self.n_fixed[b] = min(los) if los else self.n_srcs
        clean_outs, self.resid_pre = self._clean_run()
        # patch - clean for every source: [n_srcs, B, S, d]
        self.delta_clean = (patch - clean_outs).contiguous()
        # dest module -> (mask, its version, n_fixed, clean part of its patch)
        self._fixed: dict[str, tuple[torch.Tensor, int, int, torch.Tensor]] = {}
        self.attn_mask: torch.Tensor | None = None
        self.shortformer: torch.Tensor | None = None
        if self.partial:
            with torch.inference_mode():
                _, _, self.shortformer, self.attn_mask = self.wm.input_to_embed(tokens)
            if not self._partial_matches(full_out):
                self.partial = False
        self.max_copies = self._max_copies()

    # -- setup
    def _max_copies(self) -> int:
        """How many copies of the batch one forward pass may stack: the largest per-copy
        buffers (the live source differences, the per-head inputs and, when it is used,
        TransformerLens' ``use_attn_result`` intermediate
        ``[batch, pos, heads, d_head, d_model]``, see ``SrcHook``) stay under
        ``_STACK_BUDGET_BYTES`` (a constant per device type, so runs repeat exactly)."""
        cfg = self.model.cfg
        item = self.patch.element_size()
        per_token = self.n_srcs * self.d_model
        if getattr(cfg, "use_attn_result", False):
            per_token += int(cfg.n_heads) * int(cfg.d_head) * self.d_model
        if any(dh.module.n_heads for dh in self.model.dest_hooks):
            per_token += 6 * int(cfg.n_heads) * self.d_model  # per-head inputs, normalised
        per_copy = self.B * self.S * per_token * item
        budget = _STACK_BUDGET_BYTES.get(self.tokens.device.type, _STACK_BUDGET_BYTES["cpu"])
        return max(1, budget // max(per_copy, 1))

    def _clean_run(self) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        outs: dict[int, torch.Tensor] = {}
        resid: dict[int, torch.Tensor] = {}
        handles = []

        def src_hook(h: SrcHook) -> Callable[..., None]:
            def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
                outs[h.module.src_lo] = h.outputs(out).clone()

            return hook

        def resid_hook(b: int) -> Callable[..., None]:
            def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
                resid[b] = out.clone()

            return hook

        try:
            for h in self.model.src_hooks:
                point = self.model.adapter.hook_dict[h.point]
                handles.append(point.register_forward_hook(src_hook(h)))
            if self.partial:
                for b in range(self.n_layers):
                    point = self.model.adapter.hook_point(f"blocks.{b}.hook_resid_pre")
                    handles.append(point.register_forward_hook(resid_hook(b)))
            with torch.inference_mode():
                self.wm(self.tokens)
        finally:
            for h in handles:
                h.remove()
        if self.partial and len(resid) != self.n_layers:
            self.partial = False
        return torch.cat([outs[lo] for lo in sorted(outs)]), resid

    def _partial_matches(self, full_out: torch.Tensor) -> bool:
        """Check once that starting mid-model reproduces the full model (zero masks)."""
        dtype = self.delta_clean.dtype
        tol = _tolerance(dtype)
        zero = {
            n: torch.zeros(m.mask_shape, dtype=dtype, device=self.tokens.device)
            for n, m in self.model.dest_modules.items()
        }
        name = next(iter(self.model.dest_modules))
        try:
            for b in sorted({0, self.n_layers - 1}):
                out = self._run(zero, name, zero[name][None], start=b)[0]
                scale = 1.0 + float(full_out.abs().max())
                if out.shape != full_out.shape or not torch.allclose(
                    out.double(), full_out.double(), rtol=0, atol=tol * scale
                ):
                    return False
        except Exception:  # a TransformerLens version that cannot start mid-model
            return False
        return True

    # -- evaluation
    def outputs(
        self, masks: Mapping[str, torch.Tensor], module: str, cand: torch.Tensor
    ) -> torch.Tensor:
        """Outputs ``[k, B, ...]`` of the circuits given by ``masks`` with ``masks[module]``
        replaced by ``cand[j]`` for copy ``j``."""
        start = self.dest_block[module] if self.partial else None
        return self._run(masks, module, cand, start)

    def _head(self, resid: torch.Tensor) -> torch.Tensor:
        """``logits[out_slice]`` from the final residual, unembedding only the output
        positions."""
        sl = self.out_slice
        squeeze = False
        if len(sl) == 2 and sl[0] == slice(None) and isinstance(sl[1], int):
            j = sl[1] % self.S
            resid, squeeze = resid[:, j : j + 1], True
        elif len(sl) == 2 and sl[0] == slice(None) and isinstance(sl[1], slice):
            resid = resid[:, sl[1]]
        elif not (len(sl) == 1 and sl[0] == slice(None)):
            return self._logits(resid)[sl]
        logits = self._logits(resid)
        return logits[:, 0] if squeeze else logits

    def _logits(self, resid: torch.Tensor) -> torch.Tensor:
        cfg = self.wm.cfg
        if cfg.normalization_type is not None:
            resid = self.wm.ln_final(resid)
        logits = self.wm.unembed(resid)
        cap = getattr(cfg, "output_logits_soft_cap", None)
        if cap is not None and cap > 0:
            logits = cap * torch.tanh(logits / cap)
        return logits

    def _run(
        self,
        masks: Mapping[str, torch.Tensor],
        module: str,
        cand: torch.Tensor,
        start: int | None,
    ) -> torch.Tensor:
        k, B, S, d = cand.shape[0], self.B, self.S, self.d_model
        kB = k * B
        nf = self.n_fixed[start] if start is not None else 0
        dtype = self.delta_clean.dtype
        live = torch.empty(self.n_srcs - nf, kB, S, d, dtype=dtype, device=self.tokens.device)
        patch = self.patch
        pos = "" if self.model.seq_len is None else "p"
        handles = []

        def src_hook(h: SrcHook) -> Callable[..., None]:
            lo, hi = h.module.src_lo, h.module.src_hi

            def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
                dst = live[lo - nf : hi - nf].unflatten(1, (k, B))
                torch.sub(patch[lo:hi, None], h.outputs(out).unflatten(1, (k, B)), out=dst)

            return hook

        resid: dict[str, torch.Tensor] = {}

        def resid_hook(name: str) -> Callable[..., None]:
            def hook(_m: nn.Module, _i: Any, r: torch.Tensor) -> None:
                resid[name] = r

            return hook

        def dest_hook(
            dh: DestHook, mask: torch.Tensor, per_copy: bool
        ) -> Callable[..., torch.Tensor]:
            h = "" if dh.module.n_heads is None else "h"
            k_ = "k" if per_copy else ""
            lo, hi = dh.module.src_lo, dh.module.src_hi
            f_lo, f_hi = lo, min(hi, nf)  # fixed (clean) sources
            l_lo = max(lo, nf)  # live sources
            m = mask.to(dtype)
            heads = None  # projected destinations: only heads with a nonzero mask row
            if dh.projected:
                live_rows = (m != 0).reshape(-1, *m.shape[-2:]).any(0).any(-1)
                if not bool(live_rows.all()):
                    heads = live_rows.nonzero().flatten()
                    m = m.index_select(-2, heads)
            name = dh.module.module_name

            def fixed() -> torch.Tensor:
                """The clean sources' part, [k | 1, B, S, (h,) d]; for masks shared by
                all copies it only changes when the mask does, so it is cached."""
                key = (mask, mask._version, nf)
                hit = self._fixed.get(name)
                if not per_copy and hit is not None and hit[0] is key[0] and hit[1:3] == key[1:]:
                    return hit[3]
                add = torch.einsum(
                    f"{k_}{pos}{h}n,nbpd->{k_}bp{h}d",
                    m[..., f_lo - lo : f_hi - lo],
                    self.delta_clean[f_lo:f_hi],
                )
                add = add if per_copy else add[None]
                if not per_copy:
                    self._fixed[name] = (*key, add)
                return add

            def hook(_m: nn.Module, _i: Any, x: torch.Tensor) -> torch.Tensor:
                if heads is not None and heads.numel() == 0:
                    return x  # every mask row is 0
                add = None  # [k | 1, B, S, (h,) d]
                if f_lo < f_hi:
                    add = fixed()
                if l_lo < hi:
                    c = torch.einsum(
                        f"{k_}{pos}{h}n,nkbpd->kbp{h}d",
                        m[..., l_lo - lo :],
                        live[l_lo - nf : hi - nf].unflatten(1, (k, B)),
                    )
                    add = c if add is None else add + c
                if add is None:
                    return x
                if not dh.projected:
                    return (x.unflatten(0, (k, B)) + add).flatten(0, 1)
                r = resid[dh.resid]  # type: ignore[index]
                z = r.unflatten(0, (k, B)).unsqueeze(-2) + add  # [k, B, S, h, d]
                return dh.project(x, z.movedim(3, 0).flatten(1, 2), heads)

            return hook

        def fires(block: int | None) -> bool:
            return start is None or (block is not None and block >= start)

        try:
            for h in self.model.src_hooks:
                if fires(self.src_block[h.module.module_name]) and h.module.src_lo >= nf:
                    point = self.model.adapter.hook_dict[h.point]
                    handles.append(point.register_forward_hook(src_hook(h)))
            resids = set()
            for dh in self.model.dest_hooks:
                name = dh.module.module_name
                if not fires(self.dest_block[name]):
                    continue
                if name == module:
                    hook = dest_hook(dh, cand, True)
                elif bool(masks[name].any()):
                    hook = dest_hook(dh, masks[name], False)
                else:
                    continue
                handles.append(self.model.adapter.hook_dict[dh.point].register_forward_hook(hook))
                if dh.resid:
                    resids.add(dh.resid)
            for name in sorted(resids):
                handles.append(
                    self.model.adapter.hook_dict[name].register_forward_hook(resid_hook(name))
                )
            with torch.inference_mode():
                if start is None:
                    out = self.wm(self.tokens.repeat(k, 1))[self.out_slice]
                else:
                    kwargs: dict[str, Any] = {}
                    if self.attn_mask is not None:
                        kwargs["attention_mask"] = self.attn_mask.repeat(k, 1)
                    if self.shortformer is not None:
                        kwargs["shortformer_pos_embed"] = self.shortformer.repeat(k, 1, 1)
                    resid = self.wm(
                        self.resid_pre[start].repeat(k, 1, 1),
                        start_at_layer=start,
                        stop_at_layer=self.n_layers,
                        **kwargs,
                    )
                    out = self._head(resid)
        finally:
            for hd in handles:
                hd.remove()
        return out.unflatten(0, (k, B))


_STACK_BUDGET_BYTES = {"cpu": 2**30, "cuda": 8 * 2**30}
"""Memory for the stacked copies of one speculative forward pass, per device type."""


def _tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance for comparing two computations of the same outputs."""
    return math.sqrt(torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-6


# ---------------------------------------------------------------------------- search state
@dataclass
class _Group:
    """Taus whose searches have made identical decisions so far, and their shared state:
    masks (1 = ablated; tensors are never modified in place, so groups share them) and
    the loss ``prev`` of the current circuit."""

    taus: tuple[float, ...]
    masks: dict[str, torch.Tensor]
    prev: float


def _save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` atomically (:func:`edgewise.io.files.atomic_write`)."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _state(
    fingerprint: dict[str, Any], next_dest: int, groups: list[_Group], n_forwards: int
) -> dict[str, Any]:
    return {
        "fingerprint": fingerprint,
        "next_dest": next_dest,
        "n_forwards": n_forwards,
        "groups": [
            {
                "taus": list(g.taus),
                "prev": g.prev,
                "masks": {n: m.detach().bool().cpu() for n, m in g.masks.items()},
            }
            for g in groups
        ],
    }


def _restore(
    state: dict[str, Any],
    path: str,
    fingerprint: dict[str, Any],
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[int, list[_Group], int]:
    """The next destination, the groups and the forward count of a saved state; a state
    from other arguments raises ``ValueError``."""
    if state.get("fingerprint") != fingerprint:
        raise ValueError(
            f"the ACDC checkpoint {path} was written by a run with other arguments, model, data or "
            f"number of processes ({state.get('fingerprint')} != {fingerprint}); delete it or pass "
            "another path"
        )
    groups = [
        _Group(
            tuple(float(t) for t in g["taus"]),
            {n: m.to(device=device, dtype=dtype) for n, m in g["masks"].items()},
            float(g["prev"]),
        )
        for g in state["groups"]
    ]
    return int(state["next_dest"]), groups, int(state["n_forwards"])


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
        draw_seq_graph_ref: the drawing function for ``show_graphs`` (edgewise has no
            visualiser of its own, so it must be passed).
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
            "draw_seq_graph_ref(model, prune_scores); edgewise has no visualiser of its own"
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
        full = model(clean)[model.out_slice]
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
            _time_copies(fast, model, order, dtype, device)))
    # Positions before which every source's patch equals its clean output, in every
    # prompt: with causal attention no ablation changes anything there, so edges at those
    # positions are accepted without a forward pass, for every tau (the plain search
    # would compute the same loss again). Token-position graphs only; the fast path only.
    dead_until = 0
    if method == "fast" and model.seq_len is not None and model.adapter.is_causal:
        changed = (evaluator.delta_clean != 0).any(dim=(0, 1, 3))  # type: ignore[union-attr]
        dead_until = int(changed.nonzero()[0, 0]) if bool(changed.any()) else int(changed.numel())
        if rows is not None:  # the same on every process
            dead_until = int(torch.cat(gather_all(torch.tensor([dead_until], device=device))).min())
    check = None
    if test_mode and run_circuits_ref is not None:
        full_batch = full
        if rows is not None:
            with torch.inference_mode():
                full_batch = model(batch.clean.to(device))[model.out_slice]
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
    try:
        for i in range(first, len(order)):
            node, edges = order[i]
            new_groups: list[_Group] = []
            for g in groups:
                new_groups += _search_destination(
                    g,
                    node,
                    edges,
                    evaluator,
                    step_loss,
                    spec,
                    check,
                    bar,
                    counter,
                    model.n_edges,
                    dead_until,
                )
            groups = sorted(new_groups, key=lambda g: g.taus[0])
            if checkpoint is not None and rank == 0:
                _save_checkpoint(checkpoint, _state(fingerprint, i + 1, groups, counter[0]))
    finally:
        bar.close()

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
    each the best of 2 timed passes after a warm-up, with every edge ablated (as most
    are during a search: circuits are small)."""
    masks = model.new_masks(1.0, dtype=dtype)
    nodes = [order[int(len(order) * f)][0] for f in (0.25, 0.5, 0.75)]
    times: dict[int, float] = {}
    for k in (1, 2, 4, 8, 16, 32):
        if k > evaluator.max_copies:
            break
        times[k] = 0.0
        for node in nodes:
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
