"""One adapter over TransformerLens hook names, for ``HookedTransformer`` (3.x) and
``TransformerBridge`` (3.9 and 4.x) alike.

The graph names hooks the 3.x way (``blocks.1.hook_q_input``); on 4.x bridges the
canonical name carries ``attn.`` (``blocks.1.attn.hook_q_input``). ``hook_point`` tries
both. What differs between the kinds beyond hook names (which fast paths a model
allows) is answered here too, so the rest of the library never asks which kind of model
it has.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from edgewise.graph.build import GraphSpec

# Flags that make TransformerLens expose per-head results and per-head inputs.
_FLAG_SETTERS = {
    "use_attn_result": "set_use_attn_result",
    "use_split_qkv_input": "set_use_split_qkv_input",
    "use_attn_in": "set_use_attn_in",
    "use_hook_mlp_in": "set_use_hook_mlp_in",
}


def _alternatives(name: str) -> list[str]:
    """Equivalent spellings of a hook name across TransformerLens versions."""
    alts = [name]
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == "blocks":
        leaf = parts[2]
        if leaf in ("hook_q_input", "hook_k_input", "hook_v_input", "hook_attn_in"):
            alts.append(f"blocks.{parts[1]}.attn.{leaf}")
    if len(parts) == 4 and parts[2] == "attn" and parts[3] == "hook_result":
        alts.append(f"blocks.{parts[1]}.hook_result")
    return alts


class HookAdapter:
    """Finds hook points by name and switches on the hook flags edges need."""

    def __init__(self, model: nn.Module):
        hook_dict = getattr(model, "hook_dict", None)
        if not isinstance(hook_dict, dict) or not hasattr(model, "cfg"):
            raise TypeError(
                f"{type(model).__name__} has no TransformerLens hook points. edgewise patches "
                "TransformerLens models: load it as a transformer_lens.HookedTransformer or wrap "
                "a Hugging Face model with transformer_lens.model_bridge.TransformerBridge."
            )
        self.model = model
        self.hook_dict: dict[str, nn.Module] = hook_dict

    @property
    def cfg(self) -> Any:
        return self.model.cfg

    @property
    def spec(self) -> GraphSpec:
        return GraphSpec.from_config(self.cfg)

    @property
    def is_hooked_transformer(self) -> bool:
        """A TransformerLens 3.x ``HookedTransformer`` (not a bridge): its blocks' weights
        are TransformerLens tensors (``W_Q``, ``ln1``) that fast paths may read."""
        try:
            from transformer_lens import HookedTransformer
        except ImportError:  # TransformerLens 4.x has only bridges
            return False
        return isinstance(self.model, HookedTransformer)

    @property
    def is_causal(self) -> bool:
        """Whether every position attends only to itself and earlier positions. A bridge's
        ``cfg.attention_dir`` says "causal" even over a bidirectional Hugging Face model,
        so its config and attention modules are asked too."""
        m = self.model
        if getattr(self.cfg, "attention_dir", "causal") != "causal":
            return False
        if getattr(getattr(getattr(m, "original_model", None), "config", None), "is_causal", True) is False:
            return False
        return all(getattr(getattr(b, "attn", None), "is_causal", True) is not False
                   for b in getattr(m, "blocks", []))  # fmt: skip

    @property
    def runs_partial_forwards(self) -> bool:
        """Whether :meth:`forward_from` runs a slice of the blocks from a given residual
        stream: ``HookedTransformer``'s ``forward(..., start_at_layer=, stop_at_layer=)``,
        or a bridge's own block modules called with the inputs its Hugging Face model
        gives them (:mod:`edgewise.models.bridge_blocks`)."""
        import inspect

        m = self.model
        if self.is_bridge:
            return hasattr(m, "ln_final") and hasattr(m, "unembed")
        params = inspect.signature(m.forward).parameters
        return (self.is_hooked_transformer and callable(getattr(m, "input_to_embed", None))
                and hasattr(m, "unembed") and "start_at_layer" in params
                and "stop_at_layer" in params)  # fmt: skip

    @property
    def is_bridge(self) -> bool:
        """A ``TransformerBridge`` whose Hugging Face model calls its block modules one
        after another (see :func:`edgewise.models.bridge_blocks.bridge_blocks`)."""
        from edgewise.models.bridge_blocks import bridge_blocks

        return (not self.is_hooked_transformer and hasattr(self.model, "original_model")
                and bridge_blocks(self.model) is not None)  # fmt: skip

    @property
    def runs_prefix_skip(self) -> bool:
        """Whether :meth:`forward_from` takes ``past`` (the frozen keys and values of a
        prefix the pass does not compute): a causal ``HookedTransformer`` (its key-value
        cache entries) or bridge (each attention module handed the prefix's keys and
        values in TransformerLens' cache protocol: :mod:`edgewise.models.bridge_blocks`)."""
        return self.runs_partial_forwards and self.is_causal

    @contextmanager
    def recording_keys_values(self) -> Iterator[dict[int, tuple[torch.Tensor, torch.Tensor]]]:
        """Within the context, each forward pass records every block's keys and values as
        its attention uses them: ``{block: (keys, values)}``, each ``[batch, kv_heads,
        seq, d_head]`` (after rotary embeddings on a bridge, whose attention rotates
        them before its cache sees them; ``hook_k``/``hook_v`` on a ``HookedTransformer``,
        whose cache holds them before rotation). A block missing from the dict cannot take
        a prefix (:meth:`forward_from`'s ``past``)."""
        if self.is_bridge:
            from edgewise.models.bridge_blocks import recording_keys_values

            with recording_keys_values(self.model) as recorded:
                yield recorded
            return
        recorded: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        seen: dict[tuple[str, int], torch.Tensor] = {}
        handles = []

        def keep(which: str, b: int):
            def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
                seen[which, b] = out.transpose(1, 2)  # [batch, seq, heads, d] -> heads first
                if ("k", b) in seen and ("v", b) in seen:
                    recorded[b] = (seen["k", b], seen["v", b])

            return hook

        try:
            for b in range(int(self.cfg.n_layers)):
                for which in ("k", "v"):
                    name = self.resolve(f"blocks.{b}.attn.hook_{which}")
                    if name is not None:
                        handles.append(self.hook_dict[name].register_forward_hook(keep(which, b)))
            yield recorded
        finally:
            for h in handles:
                h.remove()

    def cut_start_kwargs(self, kwargs: dict[str, Any], skip: int, seq: int) -> dict[str, Any] | None:
        """``kwargs`` (:meth:`start_kwargs` of ``seq`` positions) for a pass that computes
        positions ``[skip, seq)`` only, or ``None`` where they cannot be cut (a
        ``HookedTransformer``'s padding mask or shortformer embedding; a bridge input
        whose positions :func:`edgewise.models.bridge_blocks.slice_block_inputs` does not
        know)."""
        if self.is_bridge:
            from edgewise.models.bridge_blocks import slice_block_inputs

            return slice_block_inputs(kwargs, skip, seq)
        return dict(kwargs) if not kwargs else None

    def start_kwargs(self, tokens: torch.Tensor) -> dict[str, Any]:
        """What a partial forward (:meth:`forward_from`) needs besides the residual stream
        of ``tokens`` ``[batch, seq]``: the attention mask and shortformer positional
        embedding ``HookedTransformer.input_to_embed`` gives, where it gives them; on a
        bridge, every block's other inputs as its model passes them (attention mask,
        position ids, rotary embeddings: ``bridge_blocks.record_block_inputs``)."""
        if self.is_bridge:
            from edgewise.models.bridge_blocks import record_block_inputs

            return record_block_inputs(self.model, tokens)
        _, _, shortformer, attn_mask = self.model.input_to_embed(tokens)
        kwargs: dict[str, Any] = {}
        if attn_mask is not None:
            kwargs["attention_mask"] = attn_mask
        if shortformer is not None:
            kwargs["shortformer_pos_embed"] = shortformer
        return kwargs

    def repeat_start_kwargs(self, kwargs: dict[str, Any], copies: int) -> dict[str, Any]:
        """``kwargs`` (:meth:`start_kwargs` of a batch) for ``copies`` stacked copies of
        that batch."""
        if self.is_bridge:
            from edgewise.models.bridge_blocks import repeat_block_inputs

            return repeat_block_inputs(kwargs, copies)
        return {n: v.repeat(copies, *([1] * (v.dim() - 1))) for n, v in kwargs.items()}

    def unembed_weight(self) -> torch.Tensor | None:
        """``W_U.T`` made contiguous, as ``HookedTransformer``'s unembedding makes it on
        every call (to match Hugging Face's layout): made once, a caller running many
        partial forwards (:meth:`forward_from`) saves a copy of ``W_U`` per pass. ``None``
        for a bridge, whose unembedding is Hugging Face's output layer (no copy)."""
        if self.is_bridge:
            return None
        w = getattr(getattr(self.model, "unembed", None), "W_U", None)
        return w.detach().T.contiguous() if isinstance(w, torch.Tensor) else None

    def forward_from(self, block: int, resid: torch.Tensor, out_slice: tuple[slice | int, ...],
                     unembed_weight: torch.Tensor | None = None,
                     past: list[tuple[torch.Tensor, torch.Tensor] | None] | None = None,
                     **kwargs: Any) -> torch.Tensor:  # fmt: skip
        """``logits[out_slice]`` from the residual stream ``resid`` ``[batch, seq, d_model]``
        entering ``block``: the blocks from there on, then the final norm, unembedding and
        logit soft-cap at the output positions only (see :attr:`runs_partial_forwards`).
        ``unembed_weight``: :meth:`unembed_weight`, made once by the caller. ``past``: per
        block, the keys and values ``[batch, kv_heads, skip, d_head]`` of the ``skip``
        earlier positions ``resid`` lacks, as :meth:`recording_keys_values` records them
        (``None`` before ``block``; see :attr:`runs_prefix_skip`). ``kwargs``:
        :meth:`start_kwargs`, repeated to ``batch`` (and cut to ``resid``'s positions by
        :meth:`cut_start_kwargs` with ``past``)."""
        m, n_layers = self.model, int(self.cfg.n_layers)
        bridge = self.is_bridge
        if past is not None and not self.runs_prefix_skip:
            raise ValueError(f"{type(m).__name__} cannot skip a prefix (past=): it is not a causal "
                             "model that runs partial forwards; see HookAdapter.runs_prefix_skip")  # fmt: skip
        if bridge:
            from edgewise.models.bridge_blocks import run_blocks_from

            resid = run_blocks_from(m, block, resid, kwargs, past=past)
        else:
            if past is not None:
                entries = [None if kv is None else _PrefixEntry(*kv) for kv in past]
                kwargs = {**kwargs, "past_kv_cache": entries}
            resid = m(resid, start_at_layer=block, stop_at_layer=n_layers, **kwargs)
        from edgewise.data.batches import cut_to_output

        resid, out_slice = cut_to_output(resid, out_slice)
        if bridge or self.cfg.normalization_type is not None:
            resid = m.ln_final(resid)
        if unembed_weight is None:
            logits = m.unembed(resid)
        else:  # the unembedding's own computation, without its per-call copy of W_U
            logits = torch.nn.functional.linear(resid, unembed_weight, m.unembed.b_U)
        cap = getattr(self.cfg, "output_logits_soft_cap", None)
        if cap is not None and cap > 0:
            logits = cap * torch.tanh(logits / cap)
        return logits[out_slice]

    def enable_flags(self, flags: Iterable[str]) -> None:
        """Turn on each TransformerLens flag in ``flags``; raise naming those it cannot."""
        missing = []
        for flag in flags:
            setter = getattr(self.model, _FLAG_SETTERS[flag], None)
            try:
                if setter is None:
                    raise NotImplementedError
                setter(True)
            except (NotImplementedError, AttributeError, AssertionError, ValueError) as e:
                missing.append(f"{flag} ({type(e).__name__}: {e})" if str(e) else flag)
        if missing:
            raise ValueError(
                f"{type(self.model).__name__} cannot switch on the hook flags edge patching needs: "
                f"{', '.join(missing)}. Use a HookedTransformer, or a TransformerBridge booted from "
                "a Hugging Face model (TransformerBridge.boot_transformers), which support them."
            )

    def disable_flag(self, flag: str) -> None:
        """Turn ``flag`` off if the model has it on."""
        if getattr(self.cfg, flag, False):
            getattr(self.model, _FLAG_SETTERS[flag])(False)

    @contextmanager
    def flags(self, **values: bool) -> Iterator[None]:
        """Set hook flags (``use_attn_result=True``, ...) inside the context only."""
        before = {f: bool(getattr(self.cfg, f, False)) for f in values}
        try:
            for f, v in values.items():
                if v != before[f]:
                    self.enable_flags([f]) if v else self.disable_flag(f)
            yield
        finally:
            for f, v in before.items():
                if bool(getattr(self.cfg, f, False)) != v:
                    getattr(self.model, _FLAG_SETTERS[f])(v)

    def check_patchable(self) -> None:
        """Raise if the model's blocks add something to the residual stream that per-head
        edges cannot split exactly: a norm of the summed heads that subtracts their mean
        (an RMSNorm there, Gemma 2's, splits exactly: see ``models.post_norm.PostNorm``)."""
        from edgewise.models.post_norm import post_norm

        for i in range(len(getattr(self.model, "blocks", ()))):
            post_norm(self.model, i)

    def set_ungrouped_kv(self, ungroup: bool | None) -> None:
        """Give each query head its own key and value input (``True``), share them per
        key/value head (``False``) or keep the model's setting (``None``: its
        ``cfg.ungroup_grouped_query_attention``), as MIB loads its models. A
        ``HookedTransformer`` switches TransformerLens' ``ungroup_grouped_query_attention``;
        a bridge is ungrouped in place by :func:`edgewise.models.ungroup.set_bridge_ungrouped_kv`
        (same outputs, one K/V input per query head); either way
        ``cfg.ungroup_grouped_query_attention`` then says which (the graph reads it)."""
        cfg = self.cfg
        n_kv = getattr(cfg, "n_key_value_heads", None)
        grouped = n_kv is not None and int(n_kv) != int(cfg.n_heads)
        if self.is_hooked_transformer:
            if ungroup is not None and grouped:
                self.model.set_ungroup_grouped_query_attention(bool(ungroup))
            return
        from edgewise.models.ungroup import bridge_kv_ungrouped, set_bridge_ungrouped_kv

        wants = ungroup if ungroup is not None else bool(getattr(cfg, "ungroup_grouped_query_attention", False))
        if grouped or bridge_kv_ungrouped(self.model):
            set_bridge_ungrouped_kv(self.model, bool(wants))

    def resolve(self, name: str) -> str | None:
        for alt in _alternatives(name):
            if alt in self.hook_dict:
                return alt
        return None

    def hook_point(self, name: str) -> nn.Module:
        resolved = self.resolve(name)
        if resolved is None:
            raise KeyError(name)
        return self.hook_dict[resolved]

    def check_hooks(self, names: Iterable[str]) -> None:
        """Raise a clear error if any hook in ``names`` is missing from the model."""
        missing = [n for n in names if self.resolve(n) is None]
        if missing:
            shown = ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else "")
            raise ValueError(
                f"{type(self.model).__name__} lacks hook points edge patching needs: {shown}. "
                "They exist on HookedTransformer and on TransformerBridges of Hugging Face "
                "models once use_attn_result, use_split_qkv_input and use_hook_mlp_in are set."
            )

    def probe(self, names: Iterable[str], device: torch.device | str) -> dict[str, tuple[int, ...]]:
        """Run two tokens through the model and return the shape each hook in ``names``
        saw. Raise if one never fires (some bridges list hooks that are never called)."""
        names = list(names)
        seen: dict[str, tuple[int, ...]] = {}
        handles = []
        try:
            for name in names:

                def record(_mod: nn.Module, _inp: Any, out: torch.Tensor, name: str = name) -> None:
                    seen[name] = tuple(out.shape)

                handles.append(self.hook_point(name).register_forward_hook(record))
            with torch.inference_mode():
                self.model(torch.zeros(1, 2, dtype=torch.long, device=device))
        finally:
            for h in handles:
                h.remove()
        silent = [n for n in names if n not in seen]
        if silent:
            raise ValueError(
                f"These hooks of {type(self.model).__name__} never fire in a forward pass: "
                f"{', '.join(silent[:6])}. TransformerBridge.boot_native models do not support "
                "per-head hooks; boot the bridge from a Hugging Face model instead."
            )
        return seen


class _PrefixEntry:
    """The keys and values of a prefix a ``HookedTransformer`` pass does not compute, in
    the shape of a TransformerLens key-value cache entry (frozen): given heads first
    ``[batch, kv_heads, skip, d_head]``, held as the entry holds them ``[batch, skip,
    kv_heads, d_head]``."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        self.past_keys, self.past_values = keys.transpose(1, 2), values.transpose(1, 2)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([self.past_keys, k], dim=1), torch.cat([self.past_values, v], dim=1)
