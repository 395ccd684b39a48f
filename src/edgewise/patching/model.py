"""The patchable model: a TransformerLens model with its edge graph; every edge patched in
one forward pass, gradients for every mask in one backward pass (see
:mod:`edgewise.patching.engine` for how).

A destination's input is a sum of upstream source outputs. Patching edge ``(s, d)``
replaces that source's contribution to that one destination::

    input_d = current_input_d + sum_s mask[d, s] * (patch_out_s - current_out_s)

``mask = 0`` leaves the edge as it is, ``mask = 1`` replaces it with the patch
activation, values in between interpolate. Masks and patches are explicit arguments of
:meth:`PatchableModel.patch` (a context manager that always removes its hooks), never
state left on the model.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from edgewise.graph.build import DestModule, Graph, SrcModule
from edgewise.models.adapter import HookAdapter
from edgewise.models.bridge_blocks import BridgePrefixCache, after_prefix
from edgewise.patching import engine
from edgewise.patching.buffers import BufferCache
from edgewise.patching.sites import (
    DestHook,
    SrcHook,
    needed_flags,
)
from edgewise.types import DestNode, Edge, EdgeList, Node, PruneScores, SrcNode


class PatchableModel(nn.Module):
    """A TransformerLens model with its edge graph. Calling it runs the model unchanged;
    inside ``with model.patch(masks, patch_src_outs):`` every forward pass patches edges.

    Attributes:
        wrapped_model: the TransformerLens model.
        nodes, srcs, dests, edges: the graph, in deterministic order.
        n_edges: ``len(edges)``.
        seq_len: number of token positions when edges are per position, else ``None``.
        out_slice: index applied to the logits ``[batch, seq, vocab]`` to get the output
            that metrics and algorithms use (by default the last position).
        edge_dict: position (``None`` without token positions) -> edges at that position.
        dest_modules / src_modules: hook name -> mask layout / source layout.
        src_hooks / dest_hooks: where each source module's outputs are read and each
            destination module is patched (see :mod:`edgewise.patching.sites`).
        graph_flags: the TransformerLens flags under which every hook the graph names
            (``hook_result``, ``hook_q_input``, ...) fires; independent references that
            read those hooks switch them on (``with model.adapter.flags(**graph_flags)``).
    """

    def __init__(
        self,
        model: nn.Module,
        graph: Graph,
        adapter: HookAdapter,
        out_slice: tuple[slice | int, ...],
        device: torch.device,
        src_hooks: tuple[SrcHook, ...],
        dest_hooks: tuple[DestHook, ...],
    ):
        super().__init__()
        self.src_hooks = src_hooks
        self.dest_hooks = dest_hooks
        self.scratch = BufferCache()  # scratch buffers of inference and backward passes
        self.graph_flags = needed_flags(graph, projected=False, heads_from_z=False)
        self.wrapped_model = model
        self.graph = graph
        self.adapter = adapter
        self.out_slice = out_slice
        self._device = torch.device(device)
        self.srcs: tuple[SrcNode, ...] = graph.srcs
        self.dests: tuple[DestNode, ...] = graph.dests
        self.nodes: tuple[Node, ...] = graph.srcs + graph.dests
        self.edges: EdgeList = EdgeList(graph.edges)
        self.n_edges = graph.n_edges
        self.seq_len = graph.seq_len
        self.separate_qkv = graph.separate_qkv
        self.factorized = graph.factorized
        self.dest_modules: dict[str, DestModule] = {m.module_name: m for m in graph.dest_modules}
        self.src_modules: dict[str, SrcModule] = {m.module_name: m for m in graph.src_modules}
        self.edge_dict: dict[int | None, list[Edge]] = {}
        for e in graph.edges:
            self.edge_dict.setdefault(e.seq_idx, []).append(e)
        self._edge_by_name = {(e.name, e.seq_idx): e for e in graph.edges}
        # auto-circuit's in-model masks, read only by edgewise.compat.patch_mode
        self.patch_masks: dict[str, torch.Tensor] = self.new_masks(0.0)
        self.kv_cache: Any = None  # a frozen cache of a shared prompt prefix (set_kv_caches)
        self.kv_prefix_len = 0

    @property
    def device(self) -> torch.device:
        """Where the wrapped model's parameters are (they move with ``pm.to(...)``)."""
        p = next(self.wrapped_model.parameters(), None)
        return self._device if p is None else p.device

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> PatchableModel:
        """``to``, ``cuda``, ``float``, ``double``, ...: the wrapped model as usual, and the
        masks in ``patch_masks`` too; reused buffers are dropped (wrong device or dtype)."""
        super()._apply(fn, *args, **kwargs)
        with torch.no_grad():
            self.patch_masks = {n: fn(m).detach() for n, m in self.patch_masks.items()}
        self._device = self.device
        self.free_buffers()
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The wrapped model's parameter dtype (activations and masks use it)."""
        return next(self.wrapped_model.parameters()).dtype

    @property
    def score_dtype(self) -> torch.dtype:
        """The dtype of scores: float32, or the model's dtype when that is wider (float64)."""
        return torch.promote_types(self.dtype, torch.float32)

    @property
    def cfg(self) -> Any:
        return self.wrapped_model.cfg

    # ---- auto-circuit's PatchableModel attributes and pass-throughs to the wrapped model
    seq_dim = 1  # the token axis of activations [batch, seq, d_model]
    is_transformer = True

    @property
    def is_factorized(self) -> bool:
        """auto-circuit's name for :attr:`factorized`."""
        return self.factorized

    @property
    def kv_caches(self) -> dict[int, Any] | None:
        """auto-circuit's view of the prefix cache (:meth:`set_kv_caches`): ``{batch size:
        cache}``, or ``None`` without one. edgewise expands the one cache to any batch size."""
        if self.kv_cache is None:
            return None
        return {_cache_shape(self.kv_cache)[0]: self.kv_cache}

    def run_with_cache(self, tokens: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """The wrapped model's ``run_with_cache`` (after the cached prefix, if any)."""
        if self.kv_cache is None or "past_kv_cache" in kwargs:
            return self.wrapped_model.run_with_cache(tokens, *args, **kwargs)
        with self._after_prefix(tokens, kwargs) as kwargs:
            return self.wrapped_model.run_with_cache(tokens, *args, **kwargs)

    @property
    def input_to_embed(self) -> Any:
        return self.wrapped_model.input_to_embed

    @property
    def blocks(self) -> Any:
        return self.wrapped_model.blocks

    def add_hook(self, *args: Any, **kwargs: Any) -> Any:
        return self.wrapped_model.add_hook(*args, **kwargs)

    def reset_hooks(self, *args: Any, **kwargs: Any) -> Any:
        return self.wrapped_model.reset_hooks(*args, **kwargs)

    def to_string(self, *args: Any, **kwargs: Any) -> Any:
        return self.wrapped_model.to_string(*args, **kwargs)

    def to_tokens(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped model's ``to_tokens(...)``. Without arguments, the method itself,
        as auto-circuit returns it (``model.to_tokens()(text)`` works too)."""
        fn = self.wrapped_model.to_tokens
        return fn(*args, **kwargs) if args or kwargs else fn

    def to_str_tokens(self, *args: Any, **kwargs: Any) -> Any:
        """As :meth:`to_tokens`, for ``to_str_tokens``."""
        fn = self.wrapped_model.to_str_tokens
        return fn(*args, **kwargs) if args or kwargs else fn

    @property
    def tokenizer(self) -> Any:
        return getattr(self.wrapped_model, "tokenizer", None)

    def forward(self, tokens: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Logits ``[batch, seq, vocab]`` for tokens ``[batch, seq]`` (after the cached
        prefix, if the model has one: see :meth:`set_kv_caches`)."""
        self.check_tokens(tokens)
        if self.kv_cache is None or "past_kv_cache" in kwargs:
            return self.wrapped_model(tokens, **kwargs)
        with self._after_prefix(tokens, kwargs) as kwargs:
            return self.wrapped_model(tokens, **kwargs)

    def outputs(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """The output metrics read: ``select_output(self(tokens), self.out_slice, lengths)``
        (``[batch, vocab]`` at one position, ``[batch, k, vocab]`` at ``k``), with the
        unembedding run at those positions only. Its input is cut by a pre-hook on the
        model's ``unembed`` (the final norm and logit soft-cap act per position), so a pass
        neither computes nor keeps for backward the ``[batch, seq, vocab]`` logits: at a
        150,000-token vocabulary those are most of a small model's forward and backward.
        Equal to the full logits' selection to float rounding."""
        from edgewise.data.batches import cut_to_output, select_output

        if lengths is not None:
            select_output(tokens[..., None], self.out_slice, lengths)  # its checks, before the pass
        unembed = getattr(self.wrapped_model, "unembed", None)
        if not isinstance(unembed, nn.Module):
            return select_output(self(tokens, **kwargs), self.out_slice, lengths)
        seq = int(tokens.shape[-1])
        index: list[tuple[slice | int, ...]] = []  # how to read the cut logits, once cut

        def pre_hook(_: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            x = args[0] if args else None
            if index or not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[1] != seq:
                return None  # not the residual stream of this pass: leave it whole
            if lengths is None:
                x, read = cut_to_output(x, self.out_slice)
            else:  # each prompt's own last token
                rows = torch.arange(x.shape[0], device=x.device)
                x, read = x[rows, lengths.to(x.device) - 1][:, None], (slice(None), 0)
            index.append(read)
            return (x, *args[1:])

        handle = unembed.register_forward_pre_hook(pre_hook)
        try:
            logits = self(tokens, **kwargs)
        finally:
            handle.remove()
        if not index:  # the unembedding never saw [batch, seq, d_model]: the full logits
            return select_output(logits, self.out_slice, lengths)
        return logits[index[0]]

    @contextmanager
    def _after_prefix(self, tokens: torch.Tensor, kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """``kwargs`` for one pass of ``tokens`` ``[batch, seq]`` after the cached prefix:
        a ``HookedTransformer``'s ``past_kv_cache`` (and an all-ones attention mask); on a
        bridge, its attention driven by the prefix's keys and values while the context
        lasts (:func:`edgewise.models.bridge_blocks.after_prefix`)."""
        cache = self._prefix_cache(int(tokens.shape[0]))
        if isinstance(cache, BridgePrefixCache):
            with after_prefix(self.wrapped_model, cache) as extra:
                yield {**kwargs, **extra}
            return
        yield {"attention_mask": torch.ones_like(tokens), **kwargs, "past_kv_cache": cache}

    def check_tokens(self, tokens: Any, who: str | None = None) -> None:
        """Raise a clear error for prompts this model cannot run (shape checks only, no
        sync): not ``[batch, seq]`` integer ids, a length other than the ``seq_len`` the
        graph was built with (its edges are per position), or longer than the model's
        context ``cfg.n_ctx`` (after a cached prefix)."""
        if not isinstance(tokens, torch.Tensor):
            return  # e.g. a string for TransformerLens to tokenize
        who = f"{who}: " if who else ""
        if tokens.dim() != 2 or tokens.is_floating_point() or tokens.dtype == torch.bool:
            raise TypeError(
                f"{who}prompts must be a [batch, seq] tensor of integer token ids, got "
                f"shape {tuple(tokens.shape)} and dtype {tokens.dtype}"
            )
        n = int(tokens.shape[1])
        if self.seq_len is not None and n != self.seq_len:
            raise ValueError(
                f"{who}this model's graph was built with seq_len={self.seq_len} (one edge per "
                f"token position), but the prompts have {n} tokens. Build it with "
                f"patchable_model(..., seq_len={n}) (e.g. seq_len=dataloader.seq_len), or use "
                f"prompts of {self.seq_len} tokens."
            )
        n_ctx = getattr(self.cfg, "n_ctx", None)
        if isinstance(n_ctx, int) and n + self.kv_prefix_len > n_ctx:
            prefix = f" after a cached prefix of {self.kv_prefix_len}" if self.kv_prefix_len else ""
            raise ValueError(
                f"{who}the prompts have {n} tokens{prefix}, more than the model's context "
                f"(n_ctx={n_ctx}); shorten the prompts or use a model with a longer context."
            )

    def set_kv_caches(self, kv_caches: Any) -> None:
        """Run every forward pass after a frozen key/value cache of a prompt prefix shared
        by every prompt (``load_datasets_from_json(..., tail_divergence=True)`` builds them:
        pass ``(train.kv_cache, test.kv_cache)``, or one cache; ``None`` removes it). The
        prompts the loaders yield are then the parts after that prefix, and results equal
        those of the full prompts with resample ablation. Any batch size works.

        On a ``HookedTransformer`` the cache is TransformerLens' key-value cache, passed as
        ``past_kv_cache``; on a ``TransformerBridge`` it is a
        :class:`~edgewise.models.bridge_blocks.BridgePrefixCache` (per block, keys and
        values ``[batch, kv_heads, prefix_len, d_head]``), handed to each attention module
        (:func:`~edgewise.models.bridge_blocks.after_prefix`). A cache built with the other
        kind of model is refused."""
        caches = [c for c in (kv_caches if isinstance(kv_caches, list | tuple) else [kv_caches])
                  if c is not None]
        if not caches:
            self.kv_cache, self.kv_prefix_len = None, 0
            return
        bridge = self.adapter.is_bridge
        for c in caches:
            if isinstance(c, BridgePrefixCache) != bridge:
                built, here = (("a HookedTransformer", "TransformerBridge") if bridge
                               else ("a TransformerBridge", "HookedTransformer"))
                raise ValueError(f"this prefix cache was built with {built}, but the model is a "
                                 f"{here}; load the dataset with this model")
        lengths = {_cache_shape(c)[1] for c in caches}
        if len(lengths) != 1:
            raise ValueError(f"the caches hold prefixes of different lengths {sorted(lengths)}")
        first = caches[0]
        for c in caches[1:]:  # one shared prefix: every row of every cache is the same
            if not _same_prefix(first, c):
                raise ValueError("the caches hold different prefixes; edgewise needs one shared prefix")
        if not getattr(first, "frozen", False):
            raise ValueError("the key/value cache must be frozen (cache.freeze()), or it grows every pass")
        if bridge:
            if len(first.keys_values) != int(self.cfg.n_layers):
                raise ValueError(f"the prefix cache holds {len(first.keys_values)} blocks' keys and "
                                 f"values, the model has {self.cfg.n_layers} blocks")
        self.kv_cache, self.kv_prefix_len = first, lengths.pop()

    def _prefix_cache(self, batch: int) -> Any:
        """The prefix cache with ``batch`` rows (views of its first row)."""
        import dataclasses

        c = self.kv_cache
        if isinstance(c, BridgePrefixCache):
            return c.rows(batch)
        if c.previous_attention_mask.shape[0] == batch:
            return c

        def rows(t: torch.Tensor) -> torch.Tensor:
            return t[:1].expand(batch, *t.shape[1:])

        entries = [dataclasses.replace(e, past_keys=rows(e.past_keys), past_values=rows(e.past_values))
                   for e in c.entries]
        return dataclasses.replace(c, entries=entries, previous_attention_mask=rows(c.previous_attention_mask))

    def edge(self, name: str, seq_idx: int | None = None) -> Edge:
        """The edge called ``name`` (e.g. ``"A0.1->A1.2.Q"``) at position ``seq_idx``."""
        try:
            return self._edge_by_name[(name, seq_idx)]
        except KeyError:
            raise KeyError(f"no edge {name!r} at seq_idx={seq_idx} in this graph") from None

    # ------------------------------------------------------------------ masks
    def new_masks(
        self, value: float = 0.0, requires_grad: bool = False, dtype: torch.dtype = torch.float32
    ) -> dict[str, torch.Tensor]:
        """A fresh mask per destination module, filled with ``value``."""
        return {
            name: torch.full(m.mask_shape, value, dtype=dtype, device=self.device).requires_grad_(
                requires_grad
            )
            for name, m in self.dest_modules.items()
        }

    def new_prune_scores(self, init_val: float = 0.0) -> PruneScores:
        """Scores shaped like the masks, filled with ``init_val``, in :attr:`score_dtype`
        (the model's dtype when it is float32 or float64, as auto-circuit's)."""
        return self.new_masks(init_val, dtype=self.score_dtype)

    def circuit_prune_scores(
        self,
        edges: Collection[Edge | str] | None = None,
        edge_dict: Mapping[Edge, float] | Mapping[str, float] | None = None,
        bool: bool = False,  # noqa: A002 - auto-circuit's keyword
    ) -> PruneScores:
        """Scores of 1 on ``edges`` (``Edge`` s or names) or ``edge_dict``'s values on its
        edges, 0 elsewhere; booleans with ``bool``. (auto-circuit's; names as keys of
        ``edge_dict`` work here, where auto-circuit raises a ``KeyError``.)"""
        if edges is None and edge_dict is None:
            raise ValueError("give edges or edge_dict")
        scores = self.new_prune_scores()
        for e in self.edges:
            if edges is not None and (e in edges or e.name in edges):
                scores[e.dest.module_name][e.patch_idx] = 1.0
            if edge_dict is not None:
                value = edge_dict.get(e, edge_dict.get(e.name))  # type: ignore[call-overload]
                if value is not None:
                    scores[e.dest.module_name][e.patch_idx] = float(value)
        return {n: s.bool() for n, s in scores.items()} if bool else scores

    def current_patch_masks_as_prune_scores(self) -> PruneScores:
        """``patch_masks`` themselves (shared storage, as in auto-circuit)."""
        return dict(self.patch_masks)

    def masks_from_edges(
        self, edges: set[Edge] | list[Edge], value: float = 1.0, rest: float = 0.0
    ) -> dict[str, torch.Tensor]:
        """Masks with ``value`` on ``edges`` and ``rest`` everywhere else."""
        masks = self.new_masks(rest)
        for e in edges:
            masks[e.dest.module_name][e.patch_idx] = value
        return masks

    # ------------------------------------------------------------------ sources
    def src_outs(
        self,
        tokens: torch.Tensor,
        src_block: tuple[int, int] | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Every source's output on ``tokens``: ``[n_srcs, batch, seq, d_model]`` (with
        ``src_block=(lo, hi)``, sources ``lo..hi-1`` only: ``[hi - lo, ...]``). The forward
        pass stops after the last source needed (the unembedding never runs). Pass the
        previous result as ``out`` to write into it (it is then yours no longer)."""
        return engine.capture(self, tokens, src_block, out=out)[0]

    def src_blocks(self, max_srcs: int) -> list[tuple[int, int]]:
        """Consecutive source ranges ``(lo, hi)`` of at most ``max_srcs`` sources (at least
        one whole source module each), on source-module boundaries: the blocks that
        :meth:`patch` and :meth:`src_outs` take as ``src_block``."""
        blocks: list[tuple[int, int]] = []
        for m in self.graph.src_modules:
            lo, hi = m.src_lo, m.src_hi
            if blocks and hi - blocks[-1][0] <= max_srcs:
                blocks[-1] = (blocks[-1][0], hi)
            else:
                blocks.append((lo, hi))
        return blocks

    def block_range(self, src_block: tuple[int, int] | None) -> tuple[int, int]:
        """``src_block`` as ``(lo, hi)``: all sources when None; else checked to be a range
        of whole source modules."""
        if src_block is None:
            return 0, len(self.srcs)
        lo, hi = src_block
        bounds = {m.src_lo for m in self.graph.src_modules} | {len(self.srcs)}
        if not (0 <= lo < hi <= len(self.srcs)) or lo not in bounds or hi not in bounds:
            raise ValueError(
                f"src_block {src_block} must be a range of whole source modules within "
                f"0..{len(self.srcs)}: take one from model.src_blocks(max_srcs)"
            )
        return lo, hi

    def output_at(self, hook: str, tokens: torch.Tensor) -> torch.Tensor:
        """The output of hook ``hook`` on ``tokens`` (detached); the forward pass stops
        there. Inside :meth:`patch`, the patched output."""
        seen: list[torch.Tensor] = []

        def keep(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            seen.append(out.detach())
            raise engine.SourcesDone

        with self.hooks([(hook, keep)]), torch.no_grad():
            try:
                self(tokens)
            except engine.SourcesDone:
                pass
        if not seen:
            raise RuntimeError(f"hook {hook} did not fire in the forward pass")
        return seen[0]

    @contextmanager
    def hooks(self, points: list[tuple[str, Any]]) -> Iterator[PatchableModel]:
        """Extra forward hooks ``(hook name, fn)`` for the passes inside this context
        (reading attention patterns, replacing the embeddings, ...), removed on exit.
        Hooks at one point run in the order they were registered: entered before
        :meth:`patch`, they run before its hooks (a replaced input is what gets patched);
        entered inside it, they see the patched activations."""
        with engine._hooks(self, points):
            yield self

    def free_buffers(self) -> None:
        """Release the scratch buffers kept for the next pass (the ``patch - current``
        buffer of inference passes, the backward pass's gradient rows)."""
        self.scratch.clear()

    # ------------------------------------------------------------------ patching
    @contextmanager
    def patch(
        self,
        masks: Mapping[str, torch.Tensor],
        patch_src_outs: torch.Tensor,
        fixed_delta: torch.Tensor | None = None,
        param_grads: bool = True,
        src_block: tuple[int, int] | None = None,
        src_dims: torch.Tensor | None = None,
    ) -> Iterator[PatchableModel]:
        """Within this context every forward pass patches edges by ``masks`` with
        ``patch_src_outs`` (``[n_srcs, batch | 1, seq | 1, d_model]``).

        Masks may carry a leading dim of ``c`` circuits (``[c, *mask_shape]``): the input
        must then be the prompts repeated ``c`` times (``tokens.repeat(c, 1)``), and copy
        ``i`` of the batch is patched by circuit ``i``; a mask without that dim is shared
        by every copy. ``patch_src_outs`` then holds the patches of one copy (shared by
        all), or of the whole batch (one per row: with ``c`` equal to the batch, every
        prompt gets a mask and patch of its own).

        ``fixed_delta`` (``[n_srcs, batch, seq, d_model]``, masks all 0 only) replaces the
        ``patch - current`` differences of the run: the forward pass is the unpatched one
        and each mask's gradient is ``sum grad_input_d . fixed_delta_s`` (EAP-IG on inputs
        runs interpolated inputs against the clean run's differences).

        ``param_grads=False``: backward passes are for the masks (and activations) only;
        the model's parameters stop requiring gradients within the context, so no weight
        gradient is computed or kept (nor the layer inputs only they need). At mask 0 the
        backward through each block's ``ln1`` and Q/K/V projection is then replaced by the
        sum of the mask gradients' own rows (the same values, one pass less over the
        weights).

        ``src_block=(lo, hi)`` (every mask 0; ``lo``/``hi`` on source-module boundaries,
        see :meth:`src_blocks`): only sources ``lo..hi-1`` are tracked, so the pass keeps
        ``[hi - lo, batch, seq, d_model]`` differences instead of ``n_srcs``; only their
        edges' masks get gradients (the others get 0). ``patch_src_outs`` and
        ``fixed_delta`` may then hold just those sources (``src_outs(tokens, src_block)``).

        ``src_dims`` (``[n_srcs, d_model]``, or ``[c, n_srcs, d_model]`` with stacked
        masks; inference passes only) multiplies every source's ``patch - current`` per
        dimension of its output: an edge with mask 1 then patches only the dimensions where
        ``src_dims`` is 1 and leaves the others at their current values (neuron-level
        circuits, where a "neuron" is one d_model dimension of a node's output).

        The hooks are removed on exit, also after an exception."""
        plan = engine.make_plan(self, masks, patch_src_outs, fixed_delta, param_grads, src_block,
                                src_dims=src_dims)
        # without parameter gradients the passes record no weight in their autograd graph
        # (the [d_vocab, d_model] embedding and unembedding gradients alone are GBs)
        frozen = [] if param_grads else [p for p in self.wrapped_model.parameters() if p.requires_grad]
        try:
            for p in frozen:
                p.requires_grad_(False)
            with engine.patching(self, plan):
                yield self
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def run_patched(
        self,
        tokens: torch.Tensor,
        masks: Mapping[str, torch.Tensor],
        patch_src_outs: torch.Tensor,
        src_dims: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[batch, seq, vocab]`` with edges patched by ``masks`` (and only the
        dimensions ``src_dims`` selects, see :meth:`patch`)."""
        with self.patch(masks, patch_src_outs, src_dims=src_dims):
            return self(tokens)


def _cache_shape(cache: Any) -> tuple[int, int]:
    """``(rows, prefix length)`` of a prefix cache (TransformerLens' or a bridge's)."""
    if isinstance(cache, BridgePrefixCache):
        return cache.batch_size, cache.prefix_len
    shape = cache.previous_attention_mask.shape
    return int(shape[0]), int(shape[1])


def _same_prefix(a: Any, b: Any) -> bool:
    """Whether two prefix caches of the same kind hold the same prefix (first rows)."""
    if isinstance(a, BridgePrefixCache):
        return a.same_prefix(b)
    return all(torch.equal(x.past_keys[:1], y.past_keys[:1]) for x, y in zip(b.entries, a.entries))
