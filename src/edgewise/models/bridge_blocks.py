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
``use_cache=False``), so a pass computes every position.
"""

from __future__ import annotations

import inspect
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
    model: nn.Module, block: int, resid: torch.Tensor, inputs: dict[str, Any]
) -> torch.Tensor:
    """The residual stream ``[batch, seq, d_model]`` leaving the bridge's last block, from
    ``resid`` entering ``block``: each block from there on called as the model's own loop
    calls it (``inputs``: :func:`record_block_inputs`, repeated to ``batch``)."""
    blocks = bridge_blocks(model)
    assert blocks is not None
    by_block: dict[int, dict[str, Any]] = {}
    for key, value in inputs.items():
        _, i, name = key.split(".", 2)
        by_block.setdefault(int(i), {})[name] = value
    for i in range(block, len(blocks)):
        out = blocks[i](resid, **by_block.get(i, {}))
        resid = out[0] if isinstance(out, tuple | list) else out
    return resid
