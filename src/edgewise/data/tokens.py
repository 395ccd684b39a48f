"""Token ids: turning prompt and answer values (tensors, lists of ints, ints) into
tensors, and checking that ids lie within a vocabulary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

_MAX_TOKEN_ID = 2**63  # ids must fit int64


def _is_token_id(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _as_tokens(value: Any, what: str, device: torch.device | str | None = None) -> Tensor:
    """Convert a tensor / list of ints / int into a 1-D int64 tensor."""
    if isinstance(value, Tensor):
        tokens = value.detach()
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise TypeError(f"{what}: token ids must be integers, got dtype {tokens.dtype}")
    else:
        items = [value] if _is_token_id(value) else value
        if not isinstance(items, Sequence) or not all(_is_token_id(x) for x in items):
            raise TypeError(f"{what}: expected token ids (ints), got {value!r}")
        tokens = torch.tensor(list(items), dtype=torch.int64)
    if tokens.dim() == 0:
        tokens = tokens.reshape(1)
    if tokens.dim() != 1:
        raise ValueError(
            f"{what}: expected a 1-D sequence of token ids, got shape {tuple(tokens.shape)}"
        )
    tokens = tokens.to(dtype=torch.int64)
    return tokens if device is None else tokens.to(device)


def _as_answers(value: Any, what: str, device: torch.device | str | None = None) -> Tensor:
    """Answers: token ids ``[n]`` (int64), per-position ids ``[seq, n]``, or real values
    (float, for ``answer_function="mse"``) of any shape."""
    if isinstance(value, Tensor):
        tokens = value.detach()
        if tokens.dtype == torch.bool or tokens.is_complex():
            raise TypeError(f"{what}: answers must be token ids or real numbers, got {tokens.dtype}")
        if not tokens.is_floating_point():
            tokens = tokens.to(torch.int64)
    else:
        try:
            tokens = torch.tensor(value, dtype=torch.int64 if value == [] else None)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{what}: expected token ids or numbers, got {value!r} ({e})") from None
        if tokens.dtype == torch.bool or not (tokens.is_floating_point() or tokens.dtype == torch.int64):
            raise TypeError(f"{what}: expected token ids or numbers, got {value!r}")
        tokens = tokens.float() if tokens.is_floating_point() else tokens
    tokens = tokens.reshape(1) if tokens.dim() == 0 else tokens
    return tokens if device is None else tokens.to(device)


def _check_token_ids(ids: Tensor | Sequence[int], vocab_size: int | None, what: str) -> None:
    """Raise a ``ValueError`` naming ``what``, the first bad id and its index unless every
    id is in ``0..vocab_size-1`` (with no ``vocab_size``: >= 0 and fits int64).

    Args:
        ids: an integer tensor (``[n]``), or a list of ints, which is checked before it
            becomes a tensor (so an id too large for int64 is this error, not an overflow).
        vocab_size: the vocabulary size, or ``None``.
        what: how the error names the ids, e.g. ``"prompt 3: clean"``.
    """
    where: Any = None  # the first bad id's index (a tuple for a tensor of more than one dim)
    if isinstance(ids, Tensor):
        flat = ids.reshape(-1)
        bad = (flat < 0) if vocab_size is None else (flat < 0) | (flat >= vocab_size)
        if flat.numel() > 0 and bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            value = int(flat[first])
            where = first if ids.dim() <= 1 else tuple(int(i) for i in torch.unravel_index(torch.tensor(first), ids.shape))
    else:
        limit = _MAX_TOKEN_ID if vocab_size is None else vocab_size
        where = next((i for i, x in enumerate(ids) if not 0 <= x < limit), None)
        value = None if where is None else int(ids[where])
    if where is None:
        return
    limits = (
        "token ids must be >= 0 and fit int64"
        if vocab_size is None
        else f"vocabulary size is {vocab_size}, valid ids are 0..{vocab_size - 1}"
    )
    raise ValueError(
        f"{what}: token id {value} at index {where} is outside the vocabulary "
        f"({limits})"
    )
