"""Running a ``TransformerBridge`` from the residual stream entering one of its blocks.

A bridge hands its whole forward pass to the Hugging Face model, which owns the loop over
the blocks and computes, before it, what every block is called with besides the
residual stream: the attention mask (a 4-d mask, or none where the attention is causal
by itself), position ids, rotary position embeddings, a key-value cache. Which inputs,
positional or by name, depends on the architecture and the transformers version, so
nothing here builds them: :func:`record_block_inputs` records them as the model's own
loop passes them to each block (bridge block modules, whose hook points all fire), and
:func:`run_blocks_from` calls the blocks from a given one on with the same inputs and a
new residual stream. Key-value caches are left out (each block gets ``None`` and
``use_cache=False``), so a pass computes every position, unless it is given the keys and
values of a prefix it does not compute.

A pass may skip a prefix of positions (keeping only positions ``[skip, seq)``): each
block's per-position inputs are cut to those positions (:func:`slice_block_inputs`) and
each attention module is handed the prefix's keys and values ``[batch, kv_heads, skip,
d_head]`` as an object with ``update(keys, values, layer_idx)`` (:class:`PrefixKV`),
the cache protocol TransformerLens' attention bridges call once they have projected
(and rotated) the keys and values of the positions they compute. The Hugging Face block
names its cache ``cache`` (transformers 5) and does not hand it to TransformerLens'
attention in a form it reads, so the object goes to the attention module directly, as
``past_key_values``. The prefix's keys and values are recorded the same way in the full
clean pass (:func:`recording_keys_values`). Where an attention module never calls
``update``, nothing is recorded for it and the caller computes every position.

The same objects run a whole forward pass after a prompt prefix shared by every prompt
(``load_datasets_from_json(..., tail_divergence=True)``): :func:`bridge_prefix_cache`
records the prefix's keys and values once (:class:`BridgePrefixCache`), and within
:func:`after_prefix` each attention module gets them, while the Hugging Face model gets
a cache of its own kind holding the same tensors, from which it derives the positions
and attention masks of the positions after the prefix.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

# what a block input recorded under ``blocks.{i}.{name}`` may be called with again
_NO_CACHE = {"use_cache": False}
_CACHE_NAMES = ("cache", "past_key_value", "past_key_values", "layer_past")
# inputs without a batch dimension (one entry per position)
_PER_POSITION = ("cache_position",)


class BlockInputsUnknown(TypeError):
    """The bridge's blocks are not called in a way :func:`record_block_inputs` can record
    (not with the residual stream first, or not at all): passes cannot start mid-model."""


class _Recorded(Exception):
    """Raised once the last block's inputs are recorded: the rest of the pass is not needed."""


def bridge_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The bridge's blocks, where its Hugging Face model calls them one after another with
    the residual stream first (``None`` for other models and block layouts)."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        return None
    if any(getattr(b, "original_component", None) is None for b in blocks):
        return None
    if any(hasattr(model, n) for n in ("encoder_blocks", "decoder_blocks", "L_blocks", "H_blocks")):
        return None
    return blocks


def _is_cache(value: Any) -> bool:
    try:
        from transformers.cache_utils import Cache
    except ImportError:  # pragma: no cover - every supported transformers has it
        return False
    return isinstance(value, Cache)


def record_block_inputs(model: nn.Module, tokens: torch.Tensor) -> dict[str, Any]:
    """What each block of the bridge ``model`` is called with in the forward pass of
    ``tokens`` ``[batch, seq]``, besides the residual stream: ``{"blocks.{i}.{name}":
    value}`` with every input named by the Hugging Face block's signature. Key-value
    caches become ``None`` and ``use_cache`` ``False``. Tensors keep their shapes (a
    leading dim of ``batch``, or 1 where the model broadcasts them over the batch).
    The pass stops at the last block."""
    blocks = bridge_blocks(model)
    if blocks is None:
        raise BlockInputsUnknown(
            f"{type(model).__name__} has no bridge blocks to record the inputs of"
        )
    recorded: dict[str, Any] = {}
    last = len(blocks) - 1

    def pre_hook(i: int):
        params = inspect.signature(blocks[i].original_component.forward).parameters
        sig = inspect.Signature(list(params.values()))
        kinds = {n: p.kind for n, p in params.items()}

        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            try:
                bound = sig.bind_partial(*args, **kwargs).arguments
            except TypeError as e:
                raise BlockInputsUnknown(f"block {i} of {type(model).__name__}: {e}") from e
            names = list(bound)
            if not names or not isinstance(bound[names[0]], torch.Tensor):
                raise BlockInputsUnknown(
                    f"block {i} of {type(model).__name__} is not called with the residual "
                    "stream first; passes cannot start mid-model"
                )
            for name in names[1:]:
                value = bound[name]
                if kinds[name] == inspect.Parameter.VAR_POSITIONAL:
                    raise BlockInputsUnknown(
                        f"block {i} of {type(model).__name__} is called with unnamed extra inputs"
                    )
                items = (
                    value.items()
                    if kinds[name] == inspect.Parameter.VAR_KEYWORD
                    else [(name, value)]
                )
                for n, v in items:
                    if n in _CACHE_NAMES or _is_cache(v):
                        v = None
                    recorded[f"blocks.{i}.{n}"] = _NO_CACHE.get(n, v)
            if i == last:
                raise _Recorded

        return hook

    handles = [
        b.register_forward_pre_hook(pre_hook(i), with_kwargs=True) for i, b in enumerate(blocks)
    ]
    try:
        model(tokens)
    except _Recorded:
        return recorded
    finally:
        for h in handles:
            h.remove()
    raise BlockInputsUnknown(
        f"the last block of {type(model).__name__} was not called in its forward pass"
    )


def repeat_block_inputs(inputs: dict[str, Any], copies: int) -> dict[str, Any]:
    """``inputs`` (:func:`record_block_inputs`) for a batch of ``copies`` stacked copies
    of the recorded batch: tensors with a leading batch dim are repeated, those the
    model broadcasts (leading dim 1) or that have none are kept."""
    if copies == 1:
        return dict(inputs)

    def rep(name: str, v: Any) -> Any:
        if isinstance(v, tuple):
            return tuple(rep(name, x) for x in v)
        if not isinstance(v, torch.Tensor) or v.dim() == 0 or v.shape[0] == 1:
            return v
        if name.rsplit(".", 1)[-1] in _PER_POSITION:
            return v
        return v.repeat(copies, *([1] * (v.dim() - 1)))

    return {n: rep(n, v) for n, v in inputs.items()}


def run_blocks_from(
    model: nn.Module,
    block: int,
    resid: torch.Tensor,
    inputs: dict[str, Any],
    past: Sequence[tuple[torch.Tensor, torch.Tensor] | None] | None = None,
) -> torch.Tensor:
    """The residual stream ``[batch, seq, d_model]`` leaving the bridge's last block, from
    ``resid`` entering ``block``: each block from there on called as the model's own loop
    calls it (``inputs``: :func:`record_block_inputs`, repeated to ``batch``). With
    ``past`` (per block, the keys and values ``[batch, kv_heads, skip, d_head]`` of the
    ``skip`` positions before ``resid``'s, as :func:`recording_keys_values` records them),
    ``resid`` holds positions ``[skip, seq)`` only and ``inputs`` must be cut to them
    (:func:`slice_block_inputs`)."""
    blocks = bridge_blocks(model)
    assert blocks is not None
    by_block: dict[int, dict[str, Any]] = {}
    for key, value in inputs.items():
        _, i, name = key.split(".", 2)
        by_block.setdefault(int(i), {})[name] = value
    prefixes = {i: PrefixKV(*kv) for i, kv in enumerate(past or ()) if kv is not None and i >= block}
    with _attention_caches(blocks, prefixes):
        for i in range(block, len(blocks)):
            out = blocks[i](resid, **by_block.get(i, {}))
            resid = out[0] if isinstance(out, tuple | list) else out
    return resid


class PrefixKV:
    """The keys and values ``[batch, kv_heads, skip, d_head]`` of a prefix a pass does not
    compute, in the cache protocol of TransformerLens' attention bridges: ``update``
    returns them followed by the computed positions' own (frozen: nothing is stored)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        self.keys, self.values = keys, values

    def update(self, keys: torch.Tensor, values: torch.Tensor, *_args: Any,
               **_kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        return torch.cat([self.keys, keys], dim=-2), torch.cat([self.values, values], dim=-2)


class _Recorder:
    """Keeps the keys and values an attention module computes, unchanged."""

    def __init__(self, into: dict[int, tuple[torch.Tensor, torch.Tensor]], block: int):
        self.into, self.block = into, block

    def update(self, keys: torch.Tensor, values: torch.Tensor, *_args: Any,
               **_kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        self.into[self.block] = (keys, values)
        return keys, values


@contextmanager
def _attention_caches(blocks: nn.ModuleList, caches: dict[int, Any]) -> Iterator[None]:
    """Hand ``caches[i]`` to block ``i``'s attention module as ``past_key_values``."""
    handles = []

    def inject(cache: Any):
        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            return args, {**kwargs, "past_key_values": cache}

        return hook

    try:
        for i, cache in caches.items():
            attn = getattr(blocks[i], "attn", None)
            if not isinstance(attn, nn.Module):
                raise BlockInputsUnknown(f"block {i} has no attention module to give a prefix to")
            handles.append(attn.register_forward_pre_hook(inject(cache), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def recording_keys_values(model: nn.Module) -> Iterator[dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """Within the context, every forward pass of the bridge ``model`` records each
    block's keys and values ``[batch, kv_heads, seq, d_head]`` as its attention module
    uses them (after projection and rotary embeddings; ``{block: (keys, values)}``, the
    last pass's). A block whose attention does not take TransformerLens' cache protocol
    records nothing."""
    blocks = bridge_blocks(model)
    if blocks is None:
        raise BlockInputsUnknown(f"{type(model).__name__} has no bridge blocks")
    recorded: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    with _attention_caches(blocks, {i: _Recorder(recorded, i) for i in range(len(blocks))}):
        yield recorded


# inputs with one entry per position, and the dim that holds the positions
_POSITION_DIM = {"position_ids": -1, "cache_position": -1, "position_embeddings": -2}


def slice_block_inputs(inputs: dict[str, Any], skip: int, seq: int) -> dict[str, Any] | None:
    """``inputs`` (:func:`record_block_inputs` for ``seq`` positions) for a pass that
    computes positions ``[skip, seq)`` only: position ids, cache positions and rotary
    embeddings cut to them, a 4-d attention mask to their query rows (its key columns
    still cover every position). ``None`` if some input may hold
    positions in a way not known here (then no position can be skipped)."""
    out: dict[str, Any] = {}
    for key, value in inputs.items():
        name = key.rsplit(".", 1)[-1]
        parts = value if isinstance(value, tuple) else (value,)
        if not any(isinstance(v, torch.Tensor) and v.dim() > 0 for v in parts):
            out[key] = value
            continue
        if not all(isinstance(v, torch.Tensor) for v in parts):
            return None
        if name == "attention_mask":
            if value.dim() != 4 or value.shape[-2] != seq:
                return None
            out[key] = value[..., skip:, :]
        elif name in _POSITION_DIM:
            dim = _POSITION_DIM[name]
            if any(v.shape[dim] != seq for v in parts):
                return None
            cut = tuple(v.narrow(dim, skip, seq - skip) for v in parts)
            out[key] = cut if isinstance(value, tuple) else cut[0]
        else:
            return None
    return out


class BridgePrefixCache:
    """The frozen keys and values of a prompt prefix shared by every prompt, for a bridge
    to run the rest of the prompts after (``load_datasets_from_json(...,
    tail_divergence=True)`` builds it; :func:`after_prefix` runs a pass after it).

    Per block, the keys and values ``[batch, kv_heads, prefix_len, d_head]`` as its
    attention module uses them (after projection and rotary embeddings), recorded by
    :func:`recording_keys_values` in a pass of the prefix alone. Nothing is ever stored
    into it (``frozen`` is always ``True``)."""

    frozen = True

    def __init__(self, keys_values: Sequence[tuple[torch.Tensor, torch.Tensor]]):
        if not keys_values:
            raise ValueError("a prefix cache needs the keys and values of at least one block")
        self.keys_values = tuple((k, v) for k, v in keys_values)

    @property
    def batch_size(self) -> int:
        """The rows the cache holds (every row is the same prefix)."""
        return int(self.keys_values[0][0].shape[0])

    @property
    def prefix_len(self) -> int:
        """The positions of the prefix."""
        return int(self.keys_values[0][0].shape[-2])

    def rows(self, batch: int) -> BridgePrefixCache:
        """The cache with ``batch`` rows: views of its first row (no copies)."""
        if batch == self.batch_size:
            return self

        def expand(t: torch.Tensor) -> torch.Tensor:
            return t[:1].expand(batch, *t.shape[1:])

        return BridgePrefixCache([(expand(k), expand(v)) for k, v in self.keys_values])

    def same_prefix(self, other: BridgePrefixCache) -> bool:
        """Whether ``other`` holds the same prefix (compared on the first row)."""
        return len(other.keys_values) == len(self.keys_values) and all(
            torch.equal(a[0][:1], b[0][:1]) and torch.equal(a[1][:1], b[1][:1])
            for a, b in zip(self.keys_values, other.keys_values)
        )

    def to(self, *args: Any, **kwargs: Any) -> BridgePrefixCache:
        """The cache with every tensor moved (``Tensor.to``'s arguments)."""
        return BridgePrefixCache([(k.to(*args, **kwargs), v.to(*args, **kwargs))
                                  for k, v in self.keys_values])  # fmt: skip


def bridge_prefix_cache(model: nn.Module, prefix: torch.Tensor) -> BridgePrefixCache:
    """The frozen keys and values of ``prefix`` ``[batch, prefix_len]`` (token ids) in the
    bridge ``model``, for passes after it (:func:`after_prefix`). Raises
    :class:`BlockInputsUnknown` for a bridge whose blocks this module cannot drive, and
    ``ValueError`` where some attention module does not take TransformerLens' cache
    protocol (its keys and values cannot be handed to it)."""
    blocks = bridge_blocks(model)
    if blocks is None:
        raise BlockInputsUnknown(f"{type(model).__name__} has no bridge blocks to cache a prefix in")
    with torch.no_grad(), recording_keys_values(model) as recorded:
        model(prefix)
    missing = [i for i in range(len(blocks)) if i not in recorded]
    if missing:
        raise ValueError(
            f"the attention of block(s) {missing} of {type(model).__name__} does not take "
            "TransformerLens' key-value cache protocol, so it cannot run after a cached "
            "prefix; load the dataset with tail_divergence=False (the default)"
        )
    return BridgePrefixCache([(k.detach(), v.detach()) for k, v in
                              (recorded[i] for i in range(len(blocks)))])  # fmt: skip


@contextmanager
def after_prefix(model: nn.Module, cache: BridgePrefixCache) -> Iterator[dict[str, Any]]:
    """Within the context, a forward pass of the bridge ``model`` on tokens ``[batch,
    seq]`` called with the yielded keyword arguments computes them as positions
    ``[prefix_len, prefix_len + seq)`` after ``cache``'s prefix (``cache`` with ``batch``
    rows: :meth:`BridgePrefixCache.rows`). Each attention module is handed the prefix's
    keys and values (:class:`PrefixKV`, as passes that skip a prefix get them), and the
    Hugging Face model a cache of its own kind holding the same tensors
    (``past_key_values``), from which it derives the positions (position ids, rotary
    embeddings) and the attention masks over prefix and prompt (causal, or a sliding
    window). That cache is new for every context and the prefix's tensors are never
    written to; use one context per pass."""
    from transformers.cache_utils import DynamicCache

    blocks = bridge_blocks(model)
    if blocks is None:
        raise BlockInputsUnknown(f"{type(model).__name__} has no bridge blocks")
    if len(cache.keys_values) != len(blocks):
        raise ValueError(f"the prefix cache holds {len(cache.keys_values)} blocks' keys and "
                         f"values, the model has {len(blocks)} blocks")  # fmt: skip
    hf_cache = DynamicCache()
    for i, (k, v) in enumerate(cache.keys_values):
        hf_cache.update(k, v, i)
    with _attention_caches(blocks, {i: PrefixKV(k, v) for i, (k, v) in enumerate(cache.keys_values)}):
        yield {"past_key_values": hf_cache}
