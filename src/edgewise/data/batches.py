"""Prompt pairs and their batches: the containers, batch keys, divergence, padding
and collation.

Padding comes in two kinds (``padding_side``):

- ``"left"`` (auto-circuit's, the default): prompt pairs of different lengths are
  left-padded with a pad token id so that the final positions line up. Like
  auto-circuit, edgewise does **not** mask the padding (it passes no attention mask):
  padding positions are ordinary tokens that every later position attends to, so a
  padded prompt's outputs differ from its unpadded ones. Left padding therefore always
  warns (a ``UserWarning`` saying how many prompts were padded).
- ``"right"`` (MIB's, hannamw/EAP-IG ``tokenize_plus``): each batch is right-padded to
  its longest prompt and the batch records every prompt's unpadded length
  (:attr:`PromptPairBatch.lengths`); each prompt's output is read at its own last token
  (:func:`select_output`). In a causal model no real position attends to the padding
  after it, so every real position computes exactly what the prompt alone computes, and
  nothing read depends on the padding: no attention mask is needed and none is passed
  (MIB passes one; it changes only the padding positions' own activations, which
  neither the outputs read nor, their gradient being 0, attribution scores see). No
  warning: the results are those of the unpadded prompts.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from edgewise.types import BatchKey

PaddingSide = Literal["left", "right"]


@dataclass(frozen=True, eq=False)
class PromptPair:
    """One clean/corrupt prompt pair with its answers. All tensors hold int64 token ids.

    Attributes:
        clean: ``[seq]`` the clean prompt.
        corrupt: ``[seq]`` the corrupt prompt (same length as ``clean``).
        answers: ``[n_answers]`` the correct next tokens for the clean prompt.
        wrong_answers: ``[n_wrong]`` the incorrect next tokens.
    """

    clean: Tensor
    corrupt: Tensor
    answers: Tensor
    wrong_answers: Tensor


@dataclass(frozen=True, eq=False)
class PromptPairBatch:
    """A batch of prompt pairs, as produced by :class:`PromptDataLoader`.

    Attributes:
        key: a deterministic key of the batch's tokens (see :func:`batch_key`); equal
            tokens give equal keys in every process.
        batch_diverge_idx: the first position where any clean prompt of the batch differs
            from its corrupt prompt; ``seq`` when no pair differs.
        clean: ``[batch, seq]`` clean prompts (left-padded when lengths differed).
        corrupt: ``[batch, seq]`` corrupt prompts, padded like ``clean``.
        answers: ``[batch, n_answers]`` when every prompt of the batch has the same number
            of answers, otherwise a list of ``batch`` tensors of shape ``[n_answers_i]``.
        wrong_answers: like ``answers``: ``[batch, n_wrong]`` or a list of ``[n_wrong_i]``.
        lengths: ``[batch]`` int64, each prompt's unpadded token count, when the batch was
            right-padded (prompts of different lengths, see the module doc): prompt ``i``
            is ``clean[i, :lengths[i]]`` and its output is read at ``lengths[i] - 1``.
            ``None`` when every prompt fills the batch's positions.
    """

    key: BatchKey
    batch_diverge_idx: int
    clean: Tensor
    corrupt: Tensor
    answers: Tensor | list[Tensor]
    wrong_answers: Tensor | list[Tensor]
    lengths: Tensor | None = None


def batch_key(clean: Tensor, corrupt: Tensor | None = None) -> BatchKey:
    """A deterministic 63-bit key of a batch's tokens.

    Hashes (BLAKE2b) the shape and int64 little-endian bytes of ``clean`` and, when
    given, of ``corrupt``, so the key is the same in every process and on every device
    (unlike Python's salted ``hash`` of a ``str``). Including ``corrupt`` means two batches
    with the same clean prompts but different corruptions get different keys.

    Args:
        clean: ``[batch, seq]`` (any shape works) token ids.
        corrupt: optional ``[batch, seq]`` token ids.

    Returns:
        A non-negative ``int`` below ``2**63``.
    """
    digest = hashlib.blake2b(digest_size=8)
    for tokens in (clean,) if corrupt is None else (clean, corrupt):
        array = tokens.detach().to(device="cpu", dtype=torch.int64).contiguous().numpy()
        digest.update(repr(tuple(array.shape)).encode())
        digest.update(array.astype("<i8", copy=False).tobytes())
    return int.from_bytes(digest.digest(), "big") >> 1


def first_divergence(clean: Tensor, corrupt: Tensor) -> int:
    """The first position where any clean prompt differs from its corrupt prompt.

    Args:
        clean: ``[batch, seq]`` or ``[seq]`` token ids.
        corrupt: same shape as ``clean``.

    Returns:
        An index in ``0..seq``; ``seq`` when every pair is identical.
    """
    if clean.shape != corrupt.shape:
        raise ValueError(
            f"clean and corrupt must have the same shape, got {tuple(clean.shape)} and "
            f"{tuple(corrupt.shape)}"
        )
    if clean.dim() == 1:
        clean, corrupt = clean.unsqueeze(0), corrupt.unsqueeze(0)
    differs = (clean != corrupt).any(dim=0).nonzero()
    return int(differs[0, 0]) if differs.numel() > 0 else int(clean.shape[-1])


def left_pad(sequences: Sequence[Tensor], pad_id: int, length: int | None = None) -> Tensor:
    """Stack 1-D token tensors into one tensor, padding each on the left.

    Args:
        sequences: ``n`` tensors of shape ``[seq_i]`` on one device.
        pad_id: the token id written into padding positions.
        length: the output length; default the longest ``seq_i``.

    Returns:
        ``[n, length]`` where row ``i`` ends with ``sequences[i]``.
    """
    return _pad(sequences, pad_id, length, "left")


def right_pad(sequences: Sequence[Tensor], pad_id: int, length: int | None = None) -> Tensor:
    """Stack 1-D token tensors into one tensor, padding each on the right (MIB's).

    Args:
        sequences: ``n`` tensors of shape ``[seq_i]`` on one device.
        pad_id: the token id written into padding positions.
        length: the output length; default the longest ``seq_i``.

    Returns:
        ``[n, length]`` where row ``i`` starts with ``sequences[i]``.
    """
    return _pad(sequences, pad_id, length, "right")


def _pad(sequences: Sequence[Tensor], pad_id: int, length: int | None, side: str) -> Tensor:
    if len(sequences) == 0:
        raise ValueError(f"{side}_pad needs at least one sequence")
    longest = max(int(s.shape[0]) for s in sequences)
    length = longest if length is None else length
    if length < longest:
        raise ValueError(f"length={length} is shorter than the longest sequence ({longest})")
    first = sequences[0]
    out = torch.full((len(sequences), length), pad_id, dtype=first.dtype, device=first.device)
    for row, seq in enumerate(sequences):
        n = int(seq.shape[0])
        if n > 0:
            if side == "left":
                out[row, length - n :] = seq
            else:
                out[row, :n] = seq
    return out


LAST_SEQ = (slice(None), -1)
"""The output slice of ``slice_output="last_seq"``, the only one right-padded batches
support (each prompt's last real token)."""


def select_output(
    logits: Tensor, out_slice: tuple[slice | int, ...], lengths: Tensor | None = None
) -> Tensor:
    """The output the losses and metrics read from logits ``[batch, seq, vocab]``:
    ``logits[out_slice]``, or, for a right-padded batch (``lengths`` ``[batch]``), each
    prompt's logits at its own last token ``logits[i, lengths[i] - 1]`` ``[batch, vocab]``
    (``out_slice`` must then be the last position: ``slice_output="last_seq"``)."""
    if lengths is None:
        return logits[out_slice]
    if tuple(out_slice) != LAST_SEQ:
        raise ValueError(
            "right-padded prompts of different lengths are read at each prompt's own last "
            f"token, which needs slice_output='last_seq'; the model reads {out_slice!r}. Wrap "
            "it with patchable_model(..., slice_output='last_seq'), or give prompts of one length"
        )
    if lengths.shape != logits.shape[:1]:
        raise ValueError(
            f"lengths {tuple(lengths.shape)} must give one length per prompt of the logits "
            f"{tuple(logits.shape)}"
        )
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, lengths.to(logits.device) - 1]


def cut_to_output(
    x: Tensor, out_slice: tuple[slice | int, ...]
) -> tuple[Tensor, tuple[slice | int, ...]]:
    """``x`` ``[batch, seq, ...]`` cut to the positions ``out_slice`` reads (one position
    kept as a length-1 axis), and the index that then gives ``logits[out_slice]`` from the
    logits of the cut ``x``: a position-wise computation (final norm, unembedding) need run
    only there. An ``out_slice`` of another form leaves ``x`` whole."""
    if len(out_slice) == 2 and out_slice[0] == slice(None):
        where = out_slice[1]
        if isinstance(where, int):
            j = where % x.shape[1]
            return x[:, j : j + 1], (slice(None), 0)
        if isinstance(where, slice):
            return x[:, where], (slice(None),)
    return x, out_slice


def batch_output(model: Any, logits: Tensor, batch: PromptPairBatch) -> Tensor:
    """:func:`select_output` of ``logits`` ``[batch, seq, vocab]`` at ``model.out_slice``
    and ``batch.lengths``: the output a loss or metric reads for ``batch``."""
    return select_output(logits, model.out_slice, batch.lengths)


def model_output(model: Any, tokens: Tensor, batch: PromptPairBatch) -> Tensor:
    """:func:`batch_output` of ``model(tokens)``: through ``model.outputs`` where the model
    has it (a ``PatchableModel``: the unembedding at the output positions only), else from
    the full logits (any callable with an ``out_slice``)."""
    outputs = getattr(model, "outputs", None)
    if callable(outputs):
        return outputs(tokens, batch.lengths)
    return batch_output(model, model(tokens), batch)


def _stack_or_list(tensors: Sequence[Tensor]) -> Tensor | list[Tensor]:
    if all(t.shape == tensors[0].shape for t in tensors):
        return torch.stack(list(tensors))
    return list(tensors)


def collate_prompt_pairs(
    pairs: Sequence[PromptPair],
    pad_id: int | None = None,
    seq_len: int | None = None,
    padding_side: PaddingSide = "left",
) -> PromptPairBatch:
    """Stack prompt pairs into a :class:`PromptPairBatch`.

    Args:
        pairs: ``batch`` prompt pairs; pair ``i`` has prompts of shape ``[seq_i]``.
        pad_id: if the prompts of the batch have different lengths, they are padded to
            the longest with this id. ``None``: different lengths are an error.
        seq_len: if given, the (padded) prompts must have exactly this length.
        padding_side: ``"left"`` (attended to, with a warning) or ``"right"`` (exact:
            the batch records each prompt's length, see the module doc).

    Returns:
        A batch with ``clean``/``corrupt`` of shape ``[batch, seq]`` and answers stacked to
        ``[batch, n]`` when all counts agree, else kept as a list of 1-D tensors.
    """
    if len(pairs) == 0:
        raise ValueError("cannot collate an empty batch of prompt pairs")
    check_padding_side(padding_side)
    lengths = sorted({int(p.clean.shape[0]) for p in pairs})
    real: Tensor | None = None
    if len(lengths) == 1:
        clean = torch.stack([p.clean for p in pairs])
        corrupt = torch.stack([p.corrupt for p in pairs])
    elif pad_id is None:
        raise ValueError(
            f"the prompts of this batch have different lengths {lengths} and no pad_id was "
            "given; pass pad_id to the PromptDataset or PromptDataLoader to pad them"
        )
    elif padding_side == "right":
        clean = right_pad([p.clean for p in pairs], pad_id)
        corrupt = right_pad([p.corrupt for p in pairs], pad_id)
        real = torch.tensor([int(p.clean.shape[0]) for p in pairs], device=clean.device)
    else:
        _warn_padding(len(pairs), lengths, pad_id)
        clean = left_pad([p.clean for p in pairs], pad_id)
        corrupt = left_pad([p.corrupt for p in pairs], pad_id)
    if seq_len is not None and clean.shape[1] != seq_len:
        raise ValueError(f"batch prompts have length {clean.shape[1]}, expected seq_len={seq_len}")
    return PromptPairBatch(
        key=batch_key(clean, corrupt),
        batch_diverge_idx=first_divergence(clean, corrupt),
        clean=clean,
        corrupt=corrupt,
        answers=_stack_or_list([p.answers for p in pairs]),
        wrong_answers=_stack_or_list([p.wrong_answers for p in pairs]),
        lengths=real,
    )


def check_padding_side(padding_side: str) -> None:
    """A ``ValueError`` for a ``padding_side`` other than ``"left"`` and ``"right"``."""
    if padding_side not in ("left", "right"):
        raise ValueError(
            f"padding_side must be 'left' (auto-circuit's, attended to) or 'right' (MIB's, "
            f"each prompt read at its own last token), got {padding_side!r}"
        )


collate_fn = collate_prompt_pairs
"""Alias of :func:`collate_prompt_pairs` (the name auto-circuit uses)."""


def _warn_padding(n_padded: int, lengths: Sequence[int], pad_id: int) -> None:
    """Say that padding happened and that the model will attend to it (see the module
    doc): its outputs on padded prompts are not those on the prompts alone."""
    warnings.warn(
        f"{n_padded} prompt pair(s) of lengths {sorted(set(lengths))} were left-padded to "
        f"{max(lengths)} tokens with pad id {pad_id}; edgewise passes no attention mask, so "
        "the model attends to the padding and its outputs differ from those on the unpadded "
        "prompts. Make every prompt the same length, or pass pad=False to make this an error.",
        UserWarning,
        stacklevel=3,
    )
