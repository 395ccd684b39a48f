"""Prompt data for circuit discovery: clean/corrupt prompt pairs, batching and JSON I/O.

A circuit is found by comparing a model on a *clean* prompt with the same model on a
*corrupt* prompt that differs from it in a few tokens. Each pair carries the token ids
of its correct ``answers`` and of its ``wrong_answers`` (usually the corrupt prompt's
answers).

JSON format (the public auto-circuit dataset format)::

    {
        "prompts": [
            {
                "clean": str | [int, ...],
                "corrupt": str | [int, ...],
                "answers": [str | int, ...],
                "wrong_answers": [str | int, ...]
            },
            ...
        ],
        "seq_labels": [str, ...],        # optional: one label per token position
        "word_idxs": {str: int, ...}     # optional: token positions of named words
    }

Text is tokenized with the model's Hugging Face tokenizer; integers are token ids and
are used as they are.

Padding: prompt pairs of different lengths are left-padded with a pad token id so
that the final positions line up. Like auto-circuit, edgewise does **not** mask the
padding (it passes no attention mask): padding positions are ordinary tokens that every
later position attends to, so a padded prompt's outputs differ from its unpadded ones.
Padding therefore always warns (a ``UserWarning`` saying how many prompts were padded);
keep prompts the same length where the exact outputs matter, or pass ``pad=False`` to
make different lengths an error.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from edgewise.checks import require_device, require_int
from edgewise.io.files import atomic_write
from edgewise.types import BatchKey

__all__ = [
    "BatchKey",
    "PromptDataLoader",
    "PromptDataset",
    "PromptPair",
    "PromptPairBatch",
    "batch_key",
    "check_answer_ids",
    "check_batches_for_model",
    "checked_batches",
    "collate_fn",
    "collate_prompt_pairs",
    "first_divergence",
    "left_pad",
    "load_dataset_json",
    "load_datasets_from_json",
    "loader_batches",
    "require_batches",
    "save_dataset_json",
    "shipped_dataset_names",
    "warn_if_uncorrupted",
]


_DATASETS_PACKAGE = "edgewise"
_DATASETS_DIR = "datasets"
_PROMPT_FIELDS = ("clean", "corrupt", "answers", "wrong_answers")
_MAX_TOKEN_ID = 2**63  # ids must fit int64


# --------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------


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
    """

    key: BatchKey
    batch_diverge_idx: int
    clean: Tensor
    corrupt: Tensor
    answers: Tensor | list[Tensor]
    wrong_answers: Tensor | list[Tensor]


# --------------------------------------------------------------------------------------
# Tensor helpers
# --------------------------------------------------------------------------------------


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
    if len(sequences) == 0:
        raise ValueError("left_pad needs at least one sequence")
    longest = max(int(s.shape[0]) for s in sequences)
    length = longest if length is None else length
    if length < longest:
        raise ValueError(f"length={length} is shorter than the longest sequence ({longest})")
    first = sequences[0]
    out = torch.full((len(sequences), length), pad_id, dtype=first.dtype, device=first.device)
    for row, seq in enumerate(sequences):
        if seq.shape[0] > 0:
            out[row, length - seq.shape[0] :] = seq
    return out


def _stack_or_list(tensors: Sequence[Tensor]) -> Tensor | list[Tensor]:
    if all(t.shape == tensors[0].shape for t in tensors):
        return torch.stack(list(tensors))
    return list(tensors)


def collate_prompt_pairs(
    pairs: Sequence[PromptPair], pad_id: int | None = None, seq_len: int | None = None
) -> PromptPairBatch:
    """Stack prompt pairs into a :class:`PromptPairBatch`.

    Args:
        pairs: ``batch`` prompt pairs; pair ``i`` has prompts of shape ``[seq_i]``.
        pad_id: if the prompts of the batch have different lengths, they are left-padded
            to the longest with this id (padding is attended to, see the module doc).
            ``None``: different lengths are an error.
        seq_len: if given, the (padded) prompts must have exactly this length.

    Returns:
        A batch with ``clean``/``corrupt`` of shape ``[batch, seq]`` and answers stacked to
        ``[batch, n]`` when all counts agree, else kept as a list of 1-D tensors.
    """
    if len(pairs) == 0:
        raise ValueError("cannot collate an empty batch of prompt pairs")
    lengths = sorted({int(p.clean.shape[0]) for p in pairs})
    if len(lengths) == 1:
        clean = torch.stack([p.clean for p in pairs])
        corrupt = torch.stack([p.corrupt for p in pairs])
    elif pad_id is None:
        raise ValueError(
            f"the prompts of this batch have different lengths {lengths} and no pad_id was "
            "given; pass pad_id to the PromptDataset or PromptDataLoader to left-pad them"
        )
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
    )


collate_fn = collate_prompt_pairs
"""Alias of :func:`collate_prompt_pairs` (the name auto-circuit uses)."""


def _is_token_id(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


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


def _check_vocab(tokens: Tensor, vocab_size: int | None, what: str) -> None:
    if tokens.numel() == 0:
        return
    bad = (tokens < 0) if vocab_size is None else (tokens < 0) | (tokens >= vocab_size)
    if bool(bad.any()):
        pos = int(bad.nonzero()[0, 0])
        limit = (
            "token ids must be >= 0"
            if vocab_size is None
            else f"vocabulary size is {vocab_size}, valid ids are 0..{vocab_size - 1}"
        )
        raise ValueError(
            f"{what}: token id {int(tokens[pos])} at index {pos} is outside the vocabulary "
            f"({limit})"
        )


def _rows(prompts: Sequence[Any] | Tensor, name: str) -> list[Any]:
    if isinstance(prompts, Tensor):
        if prompts.dim() != 2:
            raise ValueError(f"{name} as a tensor must be 2-D [n, seq], got {tuple(prompts.shape)}")
        return list(prompts.unbind(0))
    return list(prompts)


# --------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------


class PromptDataset(Dataset[PromptPair]):
    """A map-style dataset of :class:`PromptPair` s.

    Args:
        clean: ``n`` clean prompts, each ``[seq_i]`` token ids (a list of 1-D tensors or of
            lists of ints), or one ``[n, seq]`` tensor.
        corrupt: ``n`` corrupt prompts; prompt ``i`` must have the same length as
            ``clean[i]``.
        answers: ``n`` answer-id sequences, each ``[n_answers_i]`` (ints, lists or tensors),
            or one ``[n, n_answers]`` tensor.
        wrong_answers: like ``answers``.
        pad_id: when prompt pairs have different lengths, all prompts are left-padded to
            the longest with this id (padding positions are attended to). ``None``: keep
            them ragged; a :class:`PromptDataLoader` given a ``pad_id`` pads per batch.
        vocab_size: if given, every token id (prompts, answers, ``pad_id``) must be in
            ``0..vocab_size-1``.
        seq_labels: optional label per token position (for fixed-length prompts).
        word_idxs: optional ``{word: position}`` for named token positions.

    Attributes:
        clean: ``[n, seq]`` when all prompts have one length (or were padded), else a list
            of ``[seq_i]`` tensors. ``corrupt`` is the same.
        answers, wrong_answers: lists of ``n`` tensors ``[n_answers_i]``.
        lengths: ``[n]`` unpadded prompt lengths.
        seq_len: the common prompt length when no padding was needed, else ``None``.
        padded: whether left-padding was applied.
    """

    def __init__(
        self,
        clean: Sequence[Any] | Tensor,
        corrupt: Sequence[Any] | Tensor,
        answers: Sequence[Any] | Tensor,
        wrong_answers: Sequence[Any] | Tensor,
        *,
        pad_id: int | None = None,
        vocab_size: int | None = None,
        seq_labels: Sequence[str] | None = None,
        word_idxs: Mapping[str, int] | None = None,
    ) -> None:
        columns = {
            "clean": _rows(clean, "clean"),
            "corrupt": _rows(corrupt, "corrupt"),
            "answers": _rows(answers, "answers"),
            "wrong_answers": _rows(wrong_answers, "wrong_answers"),
        }
        counts = {name: len(col) for name, col in columns.items()}
        if len(set(counts.values())) != 1:
            raise ValueError(
                f"clean, corrupt, answers and wrong_answers need one entry per "
                f"prompt pair; got counts {counts}"
            )
        n = counts["clean"]
        if n == 0:
            raise ValueError("a PromptDataset needs at least one prompt pair")
        if pad_id is not None:
            if not _is_token_id(pad_id):
                raise TypeError(f"pad_id must be an int token id, got {pad_id!r}")
            _check_vocab(torch.tensor([pad_id]), vocab_size, "pad_id")

        device = columns["clean"][0].device if isinstance(columns["clean"][0], Tensor) else None
        tensors: dict[str, list[Tensor]] = {
            name: [
                (_as_answers if name.endswith("answers") else _as_tokens)(
                    v, f"prompt {i}: {name}", device
                )
                for i, v in enumerate(col)
            ]
            for name, col in columns.items()
        }
        for i in range(n):
            c, k = tensors["clean"][i], tensors["corrupt"][i]
            if c.shape[0] != k.shape[0]:
                raise ValueError(
                    f"prompt {i}: the clean prompt has {c.shape[0]} tokens but the corrupt "
                    f"prompt has {k.shape[0]}; each pair must have the same length so "
                    "positions line up (pad or re-word so clean and corrupt tokenize to the "
                    "same length)"
                )
            if c.shape[0] == 0:
                raise ValueError(f"prompt {i}: the prompts are empty")
            for name in _PROMPT_FIELDS:
                if not tensors[name][i].is_floating_point():  # real-valued answers: no ids
                    _check_vocab(tensors[name][i], vocab_size, f"prompt {i}: {name}")

        self.lengths: Tensor = torch.tensor([int(c.shape[0]) for c in tensors["clean"]])
        self.pad_id: int | None = pad_id
        self.vocab_size: int | None = vocab_size
        self.seq_labels: list[str] | None = None if seq_labels is None else list(seq_labels)
        self.word_idxs: dict[str, int] = dict(word_idxs or {})
        self.answers: list[Tensor] = tensors["answers"]
        self.wrong_answers: list[Tensor] = tensors["wrong_answers"]
        self.clean: Tensor | list[Tensor]
        self.corrupt: Tensor | list[Tensor]
        if bool((self.lengths == self.lengths[0]).all()):
            self.clean = torch.stack(tensors["clean"])
            self.corrupt = torch.stack(tensors["corrupt"])
            self.seq_len: int | None = int(self.lengths[0])
            self.padded = False
        elif pad_id is not None:
            lengths = self.lengths.tolist()
            _warn_padding(sum(n < max(lengths) for n in lengths), lengths, pad_id)
            self.clean = left_pad(tensors["clean"], pad_id)
            self.corrupt = left_pad(tensors["corrupt"], pad_id)
            self.seq_len = None
            self.padded = True
        else:
            self.clean = tensors["clean"]
            self.corrupt = tensors["corrupt"]
            self.seq_len = None
            self.padded = False

    def __len__(self) -> int:
        return len(self.answers)

    def __getitem__(self, idx: int) -> PromptPair:
        return PromptPair(
            self.clean[idx], self.corrupt[idx], self.answers[idx], self.wrong_answers[idx]
        )

    @classmethod
    def from_json_dict(
        cls,
        data: Mapping[str, Any],
        tokenizer: Any = None,
        prepend_bos: bool = True,
        vocab_size: int | None = None,
        *,
        pad: bool = True,
        pad_id: int | None = None,
        device: torch.device | str = "cpu",
        prompt_names: Sequence[str] | None = None,
    ) -> PromptDataset:
        """Build a dataset from a parsed JSON dict in the auto-circuit format.

        Args:
            data: ``{"prompts": [...], "seq_labels": [...]?, "word_idxs": {...}?}``.
            tokenizer: a Hugging Face tokenizer; needed only for text prompts/answers.
                Text prompts are tokenized without special tokens; text answers must be
                exactly one token each (no BOS is added to answers).
            prepend_bos: prepend ``tokenizer.bos_token_id`` to text prompts (when the
                tokenizer has one). Token-id prompts are never changed. When a BOS is
                added, ``word_idxs`` shift by one and ``seq_labels`` gain ``"<|BOS|>"``.
            vocab_size: every token id must be below it; default ``len(tokenizer)`` when
                a tokenizer is given.
            pad: left-pad prompt pairs of different lengths to the longest (padding is
                attended to). ``False``: different lengths are an error.
            pad_id: the padding id; default ``tokenizer.pad_token_id``.
            device: where the tensors live.
            prompt_names: how error messages name each prompt (default ``"prompt i"``);
                :func:`load_datasets_from_json` passes the file and the index in it.

        Returns:
            A :class:`PromptDataset` with ``[n, seq]`` prompts.

        Raises:
            ValueError: naming the prompt and field, for anything malformed.
        """
        require_device(device)
        names = list(prompt_names) if prompt_names is not None else None
        prompts = _validated_prompts(data, names)
        names = names or [f"prompt {i}" for i in range(len(prompts))]
        if vocab_size is None and tokenizer is not None:
            vocab_size = len(tokenizer)
        kinds = {isinstance(p["clean"], str) for p in prompts}
        kinds |= {isinstance(p["corrupt"], str) for p in prompts}
        if len(kinds) > 1:
            raise ValueError(
                "the prompts mix text and token-id lists; use one kind for every "
                "clean and corrupt prompt of a dataset"
            )
        text = kinds == {True}
        bos_added = False
        if text:
            if tokenizer is None:
                raise ValueError(
                    "the prompts are text but no tokenizer was given; pass a model "
                    "with a .tokenizer, or store the prompts as token-id lists"
                )
            bos_id = getattr(tokenizer, "bos_token_id", None) if prepend_bos else None
            bos_added = bos_id is not None
            prefix = [bos_id] if bos_added else []
            clean = [prefix + ids for ids in _encode(tokenizer, [p["clean"] for p in prompts])]
            corrupt = [prefix + ids for ids in _encode(tokenizer, [p["corrupt"] for p in prompts])]
            _warn_unknown_tokens(tokenizer, clean + corrupt)
        else:
            clean = [p["clean"] for p in prompts]
            corrupt = [p["corrupt"] for p in prompts]
        for name, c, k in zip(names, clean, corrupt):
            _check_prompt_ids(c, vocab_size, f"{name}: clean")
            _check_prompt_ids(k, vocab_size, f"{name}: corrupt")
            if len(c) != len(k):
                raise ValueError(
                    f"{name}: the clean prompt has {len(c)} tokens but the corrupt prompt has "
                    f"{len(k)}; each pair must have the same length so positions line up "
                    "(re-word so clean and corrupt tokenize to the same length)"
                )
        answers = [
            _answer_ids(p["answers"], tokenizer, name, "answers", vocab_size)
            for name, p in zip(names, prompts)
        ]
        wrong = [
            _answer_ids(p["wrong_answers"], tokenizer, name, "wrong_answers", vocab_size)
            for name, p in zip(names, prompts)
        ]
        lengths = {len(c) for c in clean} | {len(c) for c in corrupt}
        if len(lengths) > 1:
            if not pad:
                raise ValueError(
                    f"the prompts have different lengths ({sorted(lengths)}) and pad=False; "
                    "use pad=True or make every prompt the same length"
                )
            if pad_id is None:
                pad_id = getattr(tokenizer, "pad_token_id", None)
            if pad_id is None:
                raise ValueError(
                    f"the prompts have different lengths ({sorted(lengths)}) but there is no pad "
                    "token id; pass pad_id=... or set tokenizer.pad_token"
                )
        seq_labels = data.get("seq_labels")
        if seq_labels is not None and not (
            isinstance(seq_labels, list) and all(isinstance(x, str) for x in seq_labels)
        ):
            raise ValueError(f'"seq_labels" must be a list of strings, got {seq_labels!r}')
        word_idxs = data.get("word_idxs") or {}
        if not isinstance(word_idxs, Mapping):
            raise ValueError(f'"word_idxs" must be an object {{word: position}}, got {word_idxs!r}')
        word_idxs = _shift_word_idxs(dict(word_idxs), 0)
        if bos_added:
            seq_labels = ["<|BOS|>", *seq_labels] if seq_labels is not None else None
            word_idxs = _shift_word_idxs(word_idxs, 1)
        return cls(
            [torch.tensor(c, dtype=torch.int64, device=device) for c in clean],
            [torch.tensor(c, dtype=torch.int64, device=device) for c in corrupt],
            [a.to(device) for a in answers],
            [a.to(device) for a in wrong],
            pad_id=pad_id,
            vocab_size=vocab_size,
            seq_labels=seq_labels,
            word_idxs=word_idxs,
        )

    def to_json_dict(self) -> dict[str, Any]:
        """The dataset as a JSON-ready dict with token-id prompts (padding included)."""
        return _pairs_to_json_dict(
            (self[i] for i in range(len(self))), self.seq_labels, self.word_idxs
        )


def _validated_prompts(
    data: Mapping[str, Any], names: Sequence[str] | None = None
) -> list[Mapping[str, Any]]:
    """``data["prompts"]``, after checking that each is an object with the four fields and
    string or token-id prompts; errors name a prompt by ``names[i]`` (default
    ``"prompt i"``)."""
    if not isinstance(data, Mapping) or "prompts" not in data:
        raise ValueError('a prompt dataset must be a JSON object with a "prompts" list')
    prompts = data["prompts"]
    if not isinstance(prompts, list) or len(prompts) == 0:
        raise ValueError('"prompts" must be a non-empty list')
    if names is not None and len(names) != len(prompts):
        raise ValueError(f"{len(names)} prompt_names for {len(prompts)} prompts")
    for i, p in enumerate(prompts):
        name = names[i] if names is not None else f"prompt {i}"
        if not isinstance(p, Mapping):
            raise ValueError(f"{name}: expected an object, got {type(p).__name__} {p!r:.80}")
        missing = [f for f in _PROMPT_FIELDS if f not in p]
        if missing:
            raise ValueError(
                f"{name}: missing field(s) {missing}; each prompt needs {list(_PROMPT_FIELDS)}"
            )
        for f in ("clean", "corrupt"):
            v = p[f]
            ok = (isinstance(v, str) and v != "") or (
                isinstance(v, list) and len(v) > 0 and all(_is_token_id(x) for x in v)
            )
            if not ok:
                raise ValueError(
                    f"{name}: {f} must be a non-empty string or a non-empty list of int token "
                    f"ids, got {v!r:.80}"
                )
    return prompts


def _check_prompt_ids(ids: Sequence[int], vocab_size: int | None, where: str) -> None:
    """Every id of a token-id prompt in ``0..vocab_size-1`` (or at least in int64)."""
    limit = _MAX_TOKEN_ID if vocab_size is None else vocab_size
    bad = next((i for i, x in enumerate(ids) if not 0 <= x < limit), None)
    if bad is not None:
        limits = (
            "token ids must be >= 0 and fit int64"
            if vocab_size is None
            else f"vocabulary size is {vocab_size}, valid ids are 0..{vocab_size - 1}"
        )
        raise ValueError(
            f"{where}: token id {ids[bad]} at index {bad} is outside the vocabulary ({limits})"
        )


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [list(ids) for ids in encoded]


def _warn_unknown_tokens(tokenizer: Any, prompts: list[list[int]]) -> None:
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return
    n_bad = sum(unk in ids for ids in prompts)
    if n_bad:
        warnings.warn(
            f"{n_bad} tokenized prompt(s) contain the unknown token (id {unk}); some words are "
            "not in the tokenizer's vocabulary",
            stacklevel=3,
        )


def _answer_ids(
    value: Any, tokenizer: Any, prompt: str, field: str, vocab_size: int | None
) -> Tensor:
    """``value`` (one answer, a list of answers, or one list per position) as a tensor of
    token ids, or of real numbers when any is a float (``answer_function="mse"``);
    errors name ``prompt`` and ``field``."""
    items = value if isinstance(value, list) else [value]
    if items and all(isinstance(x, list) for x in items):  # one list of answers per position
        rows = [_answer_ids(x, tokenizer, prompt, field, vocab_size) for x in items]
        if len({r.shape for r in rows}) != 1 or len({r.dtype for r in rows}) != 1:
            raise ValueError(f"{prompt}: {field} per position must all have one length and kind")
        return torch.stack(rows)
    if items and all(isinstance(x, int | float) and not isinstance(x, bool) for x in items) and any(
        isinstance(x, float) for x in items
    ):  # real-valued answers (answer_function="mse")
        if not all(math.isfinite(x) for x in items):
            raise ValueError(f"{prompt}: {field} {items!r:.80} holds NaN or infinity")
        return torch.tensor(items, dtype=torch.float32)
    ids: list[int] = []
    for j, item in enumerate(items):
        where = f"{prompt}: {field}[{j}]"
        if _is_token_id(item):
            ids.append(item)
        elif isinstance(item, str):
            if tokenizer is None:
                raise ValueError(
                    f"{where} is the text {item!r} but no tokenizer was given; "
                    "pass a model with a .tokenizer or give the token id"
                )
            toks = tokenizer(item, add_special_tokens=False)["input_ids"]
            if len(toks) != 1:
                raise ValueError(
                    f"{where}: the answer {item!r} tokenizes to {len(toks)} tokens {list(toks)}; "
                    "each answer must be exactly one token (check leading spaces, or give the "
                    "token id as an int)"
                )
            unk = getattr(tokenizer, "unk_token_id", None)
            if unk is not None and toks[0] == unk and item != getattr(tokenizer, "unk_token", None):
                raise ValueError(
                    f"{where}: the answer {item!r} is not in the tokenizer's "
                    f"vocabulary (it tokenizes to the unknown token id {unk})"
                )
            ids.append(int(toks[0]))
        else:
            raise ValueError(f"{where} must be a string or an int token id, got {item!r:.80}")
        if ids[-1] >= _MAX_TOKEN_ID:
            raise ValueError(f"{where}: token id {ids[-1]} does not fit int64")
        if vocab_size is not None and not 0 <= ids[-1] < vocab_size:
            raise ValueError(
                f"{where}: answer {item!r} is token id {ids[-1]}, outside the vocabulary "
                f"(vocabulary size is {vocab_size}, valid ids are 0..{vocab_size - 1})"
            )
        elif ids[-1] < 0:
            raise ValueError(f"{where}: token id {ids[-1]} is negative")
    return torch.tensor(ids, dtype=torch.int64)


def _shift_word_idxs(word_idxs: dict[str, Any], shift: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, idx in word_idxs.items():
        if not _is_token_id(idx):
            raise ValueError(f"word_idxs[{name!r}] must be an int position, got {idx!r}")
        if idx + shift >= 0:
            out[name] = idx + shift
    return out


# --------------------------------------------------------------------------------------
# Loader
# --------------------------------------------------------------------------------------


def _base_prompt_dataset(dataset: Any) -> PromptDataset | None:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset if isinstance(dataset, PromptDataset) else None


class PromptDataLoader(DataLoader[PromptPairBatch]):
    """A ``DataLoader`` that yields :class:`PromptPairBatch` es.

    Args:
        dataset: a :class:`PromptDataset` (or a ``Subset`` of one, or any map-style
            dataset of :class:`PromptPair` s).
        seq_len: the fixed token length of every prompt, or ``None`` when prompts were
            padded or vary. Circuit code uses it to patch edges at specific positions.
        diverge_idx: how many leading tokens (shared by every prompt) were cut off the
            prompts and cached in ``kv_cache``; ``0`` when none were (see
            :func:`load_datasets_from_json`'s ``tail_divergence``).
        batch_size: prompts per batch.
        shuffle: reshuffle every epoch, drawing from a ``torch.Generator`` seeded with
            ``seed`` (so the sequence of orders is the same on every run).
        seed: the shuffle seed (ignored when ``generator`` is passed).
        pad_id: left-pad a batch's prompts of different lengths with this id (padding
            is attended to); default the dataset's ``pad_id``.
        seq_labels: label per token position; default the dataset's.
        word_idxs: ``{word: position}``; default the dataset's.
        kv_cache: a frozen TransformerLens key/value cache of the cut-off prefix, built
            for ``batch_size`` rows; pass it as ``past_kv_cache`` when running batches.
        drop_last: drop the last incomplete batch (default ``True``, as in auto-circuit,
            so every batch has ``batch_size`` rows).
        name: what the loader holds, for error messages (e.g. ``"the train split of
            ioi.json"``); default ``"the dataloader"``.
        **kwargs: passed to ``torch.utils.data.DataLoader`` (not ``collate_fn``).

    Attributes:
        seq_len, diverge_idx, seq_labels, word_idxs, kv_cache, pad_id, name: as above.
    """

    def __init__(
        self,
        dataset: Dataset[PromptPair],
        seq_len: int | None = None,
        diverge_idx: int = 0,
        *,
        batch_size: int = 32,
        shuffle: bool = False,
        seed: int = 0,
        pad_id: int | None = None,
        seq_labels: Sequence[str] | None = None,
        word_idxs: Mapping[str, int] | None = None,
        kv_cache: Any = None,
        drop_last: bool = True,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if "collate_fn" in kwargs:
            raise TypeError("PromptDataLoader sets its own collate_fn")
        if not _is_token_id(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        name = name or "the dataloader"
        if seq_len is not None and seq_len < 1:
            raise ValueError(f"seq_len must be a positive int or None, got {seq_len!r}")
        if diverge_idx < 0:
            raise ValueError(f"diverge_idx must be >= 0, got {diverge_idx}")
        if kv_cache is not None and diverge_idx == 0:
            raise ValueError("a kv_cache holds a cut-off prefix, so it needs diverge_idx > 0")
        base = _base_prompt_dataset(dataset)
        if base is not None:
            pad_id = base.pad_id if pad_id is None else pad_id
            seq_labels = base.seq_labels if seq_labels is None else seq_labels
            word_idxs = base.word_idxs if word_idxs is None else word_idxs
            if (
                seq_len is not None
                and isinstance(base.clean, Tensor)
                and base.clean.shape[1] != seq_len
            ):
                raise ValueError(
                    f"seq_len={seq_len} but the dataset's prompts have length {base.clean.shape[1]}"
                )
        n = len(dataset)  # type: ignore[arg-type]
        if drop_last and 0 < n < batch_size:
            raise ValueError(
                f"{name}: it has {n} prompt pairs, fewer than batch_size={batch_size}, so "
                "with drop_last=True the loader would yield no batches; use a smaller "
                "batch_size or more prompts"
            )
        generator = kwargs.pop("generator", None)
        if shuffle and generator is None:
            generator = torch.Generator().manual_seed(seed)
        super().__init__(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            generator=generator,
            collate_fn=partial(collate_prompt_pairs, pad_id=pad_id, seq_len=seq_len),
            **kwargs,
        )
        self.seq_len: int | None = seq_len
        self.diverge_idx: int = diverge_idx
        self.pad_id: int | None = pad_id
        self.seq_labels: list[str] | None = None if seq_labels is None else list(seq_labels)
        self.word_idxs: dict[str, int] = dict(word_idxs or {})
        self.kv_cache: Any = kv_cache
        self.name: str = name


def require_batches(dataloader: Any, who: str) -> None:
    """A ``ValueError`` naming the loader (its ``name``, e.g. the split and file) and
    ``who`` (the function) when ``dataloader`` yields no batches, since every score or
    output would then be silently empty or zero."""
    try:
        empty = len(dataloader) == 0
    except TypeError:  # no length: look at the first batch
        empty = next(iter(dataloader), None) is None
    if empty:
        name = getattr(dataloader, "name", None) or "the dataloader"
        n = len(getattr(dataloader, "dataset", ()))  # type: ignore[arg-type]
        raise ValueError(
            f"{who}: {name} yields no batches ({n} prompt pairs); every result would be empty "
            "or zero. Give it prompts (e.g. a nonzero count in train_test_size) or use the "
            "other split."
        )


def loader_batches(dataloader: Any, who: str) -> list[PromptPairBatch]:
    """Every batch of ``dataloader``, after :func:`require_batches`."""
    require_batches(dataloader, who)
    return list(dataloader)


def check_batches_for_model(
    model: Any, batches: Sequence[PromptPairBatch], who: str, answer_function: str | None = None
) -> None:
    """Check once, before any forward pass, that ``batches`` fit ``model``: prompt
    lengths (the model's context, and its ``seq_len`` when edges are per position), token
    ids within the model's vocabulary, and, for ``answer_function`` ``"avg_diff"`` or
    ``"avg_val"``, answers that are non-empty integer ids within its output vocabulary.
    A dataset loaded with ``model=None`` was checked against no vocabulary, so this is
    where its ids meet the model. Errors name ``who`` and the fix."""
    cfg = getattr(model, "cfg", None)
    check_tokens = getattr(model, "check_tokens", None)
    for b in batches:
        if b.clean.shape != b.corrupt.shape:
            raise ValueError(
                f"{who}: a batch's clean prompts {tuple(b.clean.shape)} and corrupt prompts "
                f"{tuple(b.corrupt.shape)} differ in shape; clean and corrupt token lengths must "
                "match, position by position (re-word them, or pad both to one length)"
            )
        if callable(check_tokens):
            check_tokens(b.clean, who)
    d_vocab = getattr(cfg, "d_vocab", None)
    d_vocab_out = getattr(cfg, "d_vocab_out", None)
    d_vocab_out = d_vocab_out if _is_token_id(d_vocab_out) and d_vocab_out > 0 else d_vocab
    if _is_token_id(d_vocab):
        lo, hi = _id_range([t for b in batches for t in (b.clean, b.corrupt)])
        if lo < 0 or hi >= d_vocab:
            raise ValueError(
                f"{who}: a prompt holds token id {lo if lo < 0 else hi}, outside the model's "
                f"vocabulary (d_vocab={d_vocab}, ids 0..{d_vocab - 1}). A dataset loaded "
                "with model=None is checked against no vocabulary: load it with the model "
                "(load_datasets_from_json(model, ...)) or fix the ids."
            )
    if answer_function in ("avg_diff", "avg_val") and _is_token_id(d_vocab_out):
        fields = ("answers", "wrong_answers") if answer_function == "avg_diff" else ("answers",)
        for field in fields:
            check_answer_ids([getattr(b, field) for b in batches], d_vocab_out, field,
                             f"{who} (answer_function={answer_function!r})")  # fmt: skip


def _id_range(tensors: Sequence[Tensor]) -> tuple[int, int]:
    """The smallest and largest id in ``tensors``, with one device sync."""
    bounds = torch.stack([f(t) for t in tensors for f in (torch.amin, torch.amax)]).cpu()
    return int(bounds.min()), int(bounds.max())


def check_answer_ids(
    answers: Sequence[Tensor | list[Tensor]], vocab_size: int | None, field: str, who: str
) -> None:
    """Raise unless every prompt's ``field`` (answers of one or more batches, each a
    ``[batch, (seq,) n]`` tensor or a list of ``[n]`` tensors) is a non-empty set of
    integer token ids below ``vocab_size``: a ``TypeError`` for real numbers, a
    ``ValueError`` for an empty set (its mean is NaN) or an id outside the vocabulary."""
    if vocab_size is None and all(isinstance(a, Tensor) for a in answers):
        # dtype and shape only (no sync): this runs on every loss
        for a in answers:
            if a.is_floating_point() or a.shape[-1] == 0:
                break
        else:
            return
    rows = [row for batch in answers for row in batch]
    if any(r.is_floating_point() for r in rows):
        example = next(r for r in rows if r.is_floating_point()).tolist()
        raise TypeError(
            f"{who}: the {field} are real numbers (e.g. {example}), not token ids. Write token "
            "ids as ints (1, not 1.0); real-valued answers need answer_function='mse'."
        )
    empty = sum(r.numel() == 0 for r in rows)
    if empty:
        raise ValueError(
            f"{who}: {empty} of {len(rows)} prompts have no {field} (an empty list); the mean "
            f"over their {field} is NaN. Give every prompt at least one"
            + (", or use answer_function='avg_val', which ignores wrong answers."
               if field == "wrong_answers" else ".")  # fmt: skip
        )
    if vocab_size is None or not rows:
        return
    lo, hi = _id_range(rows)
    if lo < 0 or hi >= vocab_size:
        raise ValueError(
            f"{who}: {field} hold token id {lo if lo < 0 else hi}, outside the model's output "
            f"vocabulary ({vocab_size} tokens, ids 0..{vocab_size - 1}). A dataset loaded with "
            "model=None is checked against no vocabulary: load it with the model "
            "(load_datasets_from_json(model, ...)) or fix the ids."
        )


def checked_batches(
    model: Any,
    dataloader: Any,
    who: str,
    answer_function: str | None = None,
    patches_from_corrupt: bool = False,
) -> list[PromptPairBatch]:
    """The batches of ``dataloader``, after the checks every scoring function makes
    once before its first forward pass: :func:`loader_batches` (not empty),
    :func:`check_batches_for_model` (lengths, token ids, answers) and, when ablated
    edges carry the corrupt run's activations, :func:`warn_if_uncorrupted`."""
    batches = loader_batches(dataloader, who)
    check_batches_for_model(model, batches, who, answer_function)
    if patches_from_corrupt:
        warn_if_uncorrupted(batches, who)
    return batches


def warn_if_uncorrupted(batches: Sequence[PromptPairBatch], who: str) -> None:
    """Warn when every clean prompt equals its corrupt prompt: patching from the corrupt
    run (resample ablation) then changes nothing, and every score is 0."""
    if all(b.batch_diverge_idx >= b.clean.shape[-1] for b in batches):
        warnings.warn(
            f"{who}: every clean prompt is identical to its corrupt prompt, so patching in "
            "the corrupt activations (resample ablation) changes nothing and every score is "
            "0. Make the corrupt prompts differ from the clean ones (e.g. swap the name or "
            "number the task is about), or use a mean or zero ablation_type.",
            UserWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------------------
# JSON I/O
# --------------------------------------------------------------------------------------


def _datasets_root() -> Any:
    return resources.files(_DATASETS_PACKAGE).joinpath(_DATASETS_DIR)


def shipped_dataset_names() -> list[str]:
    """Names of the datasets shipped inside the package (``edgewise/datasets/*.json``)."""
    root = _datasets_root()
    if not root.is_dir():
        return []
    return sorted(
        entry.name[: -len(".json")] for entry in root.iterdir() if entry.name.endswith(".json")
    )


def load_dataset_json(path_or_name: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a dataset JSON file, or a shipped dataset by name, into a dict.

    Args:
        path_or_name: a path to a ``.json`` file, or the name of a shipped dataset (with or
            without ``.json``; see :func:`shipped_dataset_names`). An existing file wins.

    Returns:
        The parsed JSON object (not validated beyond having a non-empty ``"prompts"``
        list).

    Raises:
        FileNotFoundError: no such file and no such shipped dataset.
        ValueError: naming the file, when it is not UTF-8 text, not JSON, not an object
            with a ``"prompts"`` list, or that list is empty.
    """
    path = Path(path_or_name)
    if path.is_file():
        raw, source = path.read_bytes(), str(path)
    else:
        name = str(path_or_name)
        stem = name[: -len(".json")] if name.endswith(".json") else name
        resource = None
        if isinstance(path_or_name, str) and "/" not in name and os.sep not in name:
            candidate = _datasets_root().joinpath(f"{stem}.json")
            resource = candidate if candidate.is_file() else None
        if resource is None:
            raise FileNotFoundError(
                f"no dataset file at {name!r} and no shipped dataset named {stem!r}; "
                f"shipped datasets: {', '.join(shipped_dataset_names()) or '(none)'}"
            )
        raw, source = resource.read_bytes(), f"shipped dataset {stem!r}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{source}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}: "
            f"{err.reason}); save the dataset as UTF-8 JSON"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: invalid JSON: {err}") from None
    except RecursionError:
        raise ValueError(f"{source}: invalid JSON: nested too deeply") from None
    if not isinstance(data, dict) or not isinstance(data.get("prompts"), list):
        raise ValueError(
            f'{source}: expected a JSON object with a "prompts" list, got '
            + (f"keys {sorted(data)!r:.80}" if isinstance(data, dict) else type(data).__name__)
        )
    if not data["prompts"]:
        raise ValueError(f'{source}: the file has no prompts (its "prompts" list is empty)')
    return data


def _pairs_to_json_dict(
    pairs: Iterable[PromptPair],
    seq_labels: Sequence[str] | None,
    word_idxs: Mapping[str, int] | None,
) -> dict[str, Any]:
    prompts = [
        {
            "clean": p.clean.tolist(),
            "corrupt": p.corrupt.tolist(),
            "answers": p.answers.tolist(),
            "wrong_answers": p.wrong_answers.tolist(),
        }
        for p in pairs
    ]
    if not prompts:
        raise ValueError("cannot save an empty dataset")
    data: dict[str, Any] = {"prompts": prompts}
    if seq_labels is not None:
        data["seq_labels"] = list(seq_labels)
    if word_idxs:
        data["word_idxs"] = dict(word_idxs)
    return data


def save_dataset_json(
    path: str | os.PathLike[str],
    dataset_or_pairs: Dataset[PromptPair] | Iterable[PromptPair],
    *,
    seq_labels: Sequence[str] | None = None,
    word_idxs: Mapping[str, int] | None = None,
) -> Path:
    """Write prompt pairs as token ids in the auto-circuit JSON format, atomically.

    Loading the file back (with no tokenizer, and ``shuffle=False`` in
    :func:`load_datasets_from_json`) gives identical tensors. Padded prompts are saved
    with their padding.

    Args:
        path: the destination file; written via a temporary file in the same directory
            and ``os.replace``, so readers never see a partial file.
        dataset_or_pairs: a :class:`PromptDataset`, a ``Subset`` of one, any map-style
            dataset of :class:`PromptPair` s, or an iterable of them.
        seq_labels: labels per position; default the dataset's (if it has them).
        word_idxs: ``{word: position}``; default the dataset's.

    Returns:
        The path written.
    """
    base = _base_prompt_dataset(dataset_or_pairs)
    if base is not None:
        seq_labels = base.seq_labels if seq_labels is None else seq_labels
        word_idxs = base.word_idxs if word_idxs is None else word_idxs
    if isinstance(dataset_or_pairs, Dataset) and hasattr(dataset_or_pairs, "__len__"):
        pairs: Iterable[PromptPair] = (
            dataset_or_pairs[i]
            for i in range(len(dataset_or_pairs))  # type: ignore[arg-type]
        )
    else:
        pairs = dataset_or_pairs  # type: ignore[assignment]
    data = _pairs_to_json_dict(pairs, seq_labels, word_idxs)
    lines = ["{", '  "prompts": [']
    lines += [
        f"    {json.dumps(p)}{',' if i < len(data['prompts']) - 1 else ''}"
        for i, p in enumerate(data["prompts"])
    ]
    lines.append("  ]" + ("," if len(data) > 1 else ""))
    extras = [k for k in data if k != "prompts"]
    lines += [
        f"  {json.dumps(k)}: {json.dumps(data[k])}{',' if j < len(extras) - 1 else ''}"
        for j, k in enumerate(extras)
    ]
    lines.append("}")
    text = "\n".join(lines) + "\n"

    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _split_sizes(train_test_size: Sequence[int | float], n_available: int) -> tuple[int, int]:
    if len(train_test_size) != 2:
        raise ValueError(f"train_test_size must be (train, test), got {train_test_size!r}")
    a, b = train_test_size
    if _is_token_id(a) and _is_token_id(b):
        if a < 0 or b < 0:
            raise ValueError(f"train_test_size must be non-negative, got {train_test_size!r}")
        if a + b > n_available:
            raise ValueError(
                f"train_test_size={tuple(train_test_size)} asks for {a + b} prompts but the "
                f"dataset has {n_available}; ask for fewer, or give fractions such as (0.5, 0.5)"
            )
        return a, b
    if all(isinstance(x, float) for x in (a, b)):
        if a < 0 or b < 0 or a + b > 1 + 1e-9:
            raise ValueError(
                f"fractional train_test_size must be >= 0 and sum to at most 1, "
                f"got {train_test_size!r}"
            )
        n_train = int(a * n_available)
        n_test = n_available - n_train if abs(a + b - 1) < 1e-9 else int(b * n_available)
        return n_train, n_test
    raise ValueError(
        f"train_test_size must be two ints (counts) or two floats (fractions), "
        f"got {train_test_size!r}"
    )


def _common_prefix_len(dataset: PromptDataset) -> int:
    assert isinstance(dataset.clean, Tensor) and isinstance(dataset.corrupt, Tensor)
    rows = torch.cat([dataset.clean, dataset.corrupt])
    same = (rows == rows[:1]).all(dim=0)
    differs = (~same).nonzero()
    return int(differs[0, 0]) if differs.numel() > 0 else int(rows.shape[1])


def require_full_prompts(
    dataloader: Any, model: Any = None, ablation_type: Any = None, supported: bool = True
) -> None:
    """Raise unless ``dataloader``'s prompts are whole, or were cut after their shared
    prefix (``tail_divergence=True``) and ``model`` runs them after that prefix's cache
    (``patchable_model(..., kv_caches=...)``): otherwise results would silently be those
    of the cut prompts. With a prefix cache, only resample ablation gives the results of
    the full prompts (the prefix's sources are not in the graph, so nothing there would be
    ablated), and an algorithm that cannot use the cache (``supported=False``) refuses."""
    from edgewise.types import AblationType

    if getattr(dataloader, "kv_cache", None) is None:
        return
    cut = (f"this dataloader's prompts were cut after their first {dataloader.diverge_idx} tokens "
           "(tail_divergence=True), which live only in loader.kv_cache")
    if not supported:
        raise ValueError(f"{cut}; this algorithm cannot run after a prefix cache. Load the "
                         "dataset with tail_divergence=False (the default).")
    if getattr(model, "kv_cache", None) is None:
        raise ValueError(
            f"{cut}, but the model has no prefix cache, so every result would be for the cut "
            "prompts. Pass kv_caches=(train.kv_cache, test.kv_cache) to patchable_model, or "
            "load the dataset with tail_divergence=False (the default)."
        )
    if model.kv_prefix_len != dataloader.diverge_idx:
        raise ValueError(f"the model caches a {model.kv_prefix_len}-token prefix, the dataloader "
                         f"cut {dataloader.diverge_idx} tokens: they are not the same prompts")
    if ablation_type is not None and AblationType(ablation_type) != AblationType.RESAMPLE:
        raise ValueError(
            f"{ablation_type} after a prefix cache would leave the prefix unablated, unlike the "
            "same run on the full prompts; use resample ablation or tail_divergence=False"
        )


def _prefix_kv_caches(model: Any, prefix: Tensor, batch_sizes: set[int]) -> dict[int, Any]:
    """Run ``prefix`` ([d] token ids) through ``model`` once per batch size; frozen caches."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or not callable(model):
        raise ValueError(
            "tail_divergence needs a TransformerLens model (with .cfg) to cache the "
            "shared prefix's keys and values"
        )
    try:
        from transformer_lens.cache.key_value_cache import (
            TransformerLensKeyValueCache as KVCache,
        )
    except ImportError:  # TransformerLens < 3
        from transformer_lens.past_key_value_caching import (  # type: ignore[no-redef]
            HookedTransformerKeyValueCache as KVCache,
        )
    device = getattr(cfg, "device", None) or prefix.device
    caches: dict[int, Any] = {}
    for size in sorted(batch_sizes):
        cache = KVCache.init_cache(cfg, device, size)
        tokens = prefix.to(device).unsqueeze(0).expand(size, -1).contiguous()
        with torch.no_grad():
            model(tokens, past_kv_cache=cache, attention_mask=torch.ones_like(tokens))
        cache.freeze()
        caches[size] = cache
    return caches


def load_datasets_from_json(
    model: Any,
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    device: torch.device | str = "cpu",
    prepend_bos: bool = True,
    batch_size: int | tuple[int, int] = 32,
    train_test_size: Sequence[int | float] = (128, 128),
    return_seq_length: bool = False,
    tail_divergence: bool = False,
    shuffle: bool = True,
    random_seed: int = 42,
    pad: bool = True,
    *,
    pad_id: int | None = None,
) -> tuple[PromptDataLoader, PromptDataLoader]:
    """Load prompt pairs from JSON and split them into train and test loaders.

    Follows auto-circuit's ``load_datasets_from_json``.

    Args:
        model: anything with a ``.tokenizer`` (a Hugging Face tokenizer), e.g. a
            TransformerLens model; ``None`` when every prompt and answer is given as token
            ids. ``model.cfg.d_vocab`` (if present, else ``len(tokenizer)``) bounds the ids.
        path: a JSON file, the name of a shipped dataset, or a list of those (the first is
            loaded in full; the others only add their ``"prompts"``).
        device: where the prompt tensors live.
        prepend_bos: prepend the tokenizer's BOS id to text prompts (when it has one);
            ``word_idxs``/``seq_labels`` are shifted to match. Token-id prompts are used as
            they are.
        batch_size: the batch size, or ``(train, test)`` batch sizes.
        train_test_size: ``(n_train, n_test)`` counts, or ``(f_train, f_test)`` fractions
            of the dataset. The first ``n_train`` prompts (after shuffling) are the train
            split and the next ``n_test`` the test split.
        return_seq_length: set the loaders' ``seq_len`` to the prompt length; every prompt
            must then have the same length (no padding). ``False``: ``seq_len`` is ``None``.
        tail_divergence: cut off the longest prefix shared by every clean and corrupt
            prompt, cache its keys/values with ``model`` (``loader.kv_cache``, one per
            batch size) and set ``loader.diverge_idx`` to its length. ``seq_labels`` and
            ``word_idxs`` are shifted to match. Needs a TransformerLens model.
        shuffle: shuffle the prompts once, with ``random.Random(random_seed)``, before
            splitting; the loaders themselves do not reshuffle, so runs are reproducible.
        random_seed: the shuffle seed.
        pad: left-pad prompts of different lengths to the longest, with a warning: the
            padding is attended to (no attention mask; see the module doc). ``False``:
            different lengths are an error.
        pad_id: the padding id; default ``model.tokenizer.pad_token_id``.

    Returns:
        ``(train_loader, test_loader)``; batches have ``clean``/``corrupt`` of shape
        ``[batch, seq]``. Loaders drop incomplete final batches. Each loader's ``name``
        says which split of which file it holds; an empty split (``train_test_size=(0,
        n)``) gives a loader that scoring functions refuse, naming the split.

    Raises:
        ValueError: naming the file (and, for a bad prompt, its index in the file, before
            shuffling), for any malformed dataset; for prompts longer than the model's
            context ``model.cfg.n_ctx``; for a ``device`` this machine lacks.
        TypeError: for a ``batch_size`` that is not an int.
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        raise ValueError("no dataset path given")
    require_device(device)
    sizes = batch_size if isinstance(batch_size, tuple) else (batch_size, batch_size)
    if len(sizes) != 2:
        raise ValueError(f"batch_size must be an int or (train, test), got {batch_size!r}")
    sizes = (require_int(sizes[0], "batch_size", 1), require_int(sizes[1], "batch_size", 1))
    # every prompt is named by its file and its index there, which shuffling keeps
    data: dict[str, Any] = {}
    prompts: list[Any] = []
    names: list[str] = []
    sources = [_source_name(p) for p in paths]
    for p, source in zip(paths, sources):
        contents = load_dataset_json(p)
        data = data or contents
        file_names = [f"{source}: prompt {i}" for i in range(len(contents["prompts"]))]
        prompts += _validated_prompts(contents, file_names)
        names += file_names
    if shuffle:  # one permutation for both (shuffle's swaps depend only on the length)
        order = list(range(len(prompts)))
        random.Random(random_seed).shuffle(order)
        prompts, names = [prompts[i] for i in order], [names[i] for i in order]
    where = ", ".join(sources)
    try:
        n_train, n_test = _split_sizes(train_test_size, len(prompts))
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    if n_train + n_test == 0:
        raise ValueError(f"{where}: train_test_size={tuple(train_test_size)} selects no prompts")

    tokenizer = getattr(model, "tokenizer", None) if model is not None else None
    d_vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    vocab_size = d_vocab if _is_token_id(d_vocab) and d_vocab > 0 else None
    try:
        dataset = PromptDataset.from_json_dict(
            {**data, "prompts": prompts[: n_train + n_test]},
            tokenizer,
            prepend_bos=prepend_bos,
            vocab_size=vocab_size,
            pad=pad,
            pad_id=pad_id,
            device=device,
            prompt_names=names[: n_train + n_test],
        )
    except ValueError as err:  # name the file(s) in errors about the dataset as a whole
        if any(source in str(err) for source in sources):
            raise
        raise ValueError(f"{where}: {err}") from None
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    longest = int(dataset.lengths.max())
    if _is_token_id(n_ctx) and longest > n_ctx:
        too_long = [names[i] for i in range(len(dataset)) if int(dataset.lengths[i]) > n_ctx]
        raise ValueError(
            f"{where}: {len(too_long)} prompt(s) have more tokens than the model's context "
            f"(n_ctx={n_ctx}), the longest {longest} (e.g. {too_long[0]}); shorten them or "
            "use a model with a longer context"
        )
    seq_len: int | None = None
    if return_seq_length:
        if dataset.seq_len is None:
            raise ValueError(
                "return_seq_length=True needs every prompt to have the same token length, but "
                f"lengths range over {sorted(set(dataset.lengths.tolist()))}"
            )
        seq_len = dataset.seq_len

    diverge_idx = 0
    caches: dict[int, Any] = {}
    if tail_divergence:
        if model is None:
            raise ValueError("tail_divergence needs a model to cache the shared prefix")
        assert isinstance(dataset.clean, Tensor) and isinstance(dataset.corrupt, Tensor)
        diverge_idx = min(_common_prefix_len(dataset), dataset.clean.shape[1] - 1)
        if diverge_idx > 0:
            caches = _prefix_kv_caches(model, dataset.clean[0, :diverge_idx], set(sizes))
            labels = dataset.seq_labels
            dataset = PromptDataset(
                dataset.clean[:, diverge_idx:],
                dataset.corrupt[:, diverge_idx:],
                dataset.answers,
                dataset.wrong_answers,
                pad_id=dataset.pad_id,
                vocab_size=dataset.vocab_size,
                seq_labels=None if labels is None else labels[diverge_idx:],
                word_idxs=_shift_word_idxs(dataset.word_idxs, -diverge_idx),
            )
            seq_len = None if seq_len is None else seq_len - diverge_idx

    splits = (range(n_train), range(n_train, n_train + n_test))
    loaders = tuple(
        PromptDataLoader(
            Subset(dataset, list(indices)),
            seq_len=seq_len,
            diverge_idx=diverge_idx,
            batch_size=size,
            shuffle=False,
            kv_cache=caches.get(size),
            name=f"the {split} split of {where} (train_test_size={tuple(train_test_size)})",
        )
        for indices, size, split in zip(splits, sizes, ("train", "test"))
    )
    return loaders[0], loaders[1]


def _source_name(path: str | os.PathLike[str]) -> str:
    """How messages name a dataset: its path as given (a shipped dataset by its name)."""
    return os.fspath(path)
