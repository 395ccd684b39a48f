"""The prompt-pair dataset and its loader: :class:`PromptDataset` (from tensors, lists
or a parsed JSON dict) and :class:`PromptDataLoader`, which yields
:class:`~edgewise.data.batches.PromptPairBatch` es."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from edgewise.checks import require_device
from edgewise.data.batches import (
    PaddingSide,
    PromptPair,
    PromptPairBatch,
    _warn_padding,
    check_padding_side,
    collate_prompt_pairs,
    left_pad,
)
from edgewise.data.json_format import (
    _PROMPT_FIELDS,
    _answer_ids,
    _checked_seq_labels,
    _checked_word_idxs,
    _encode,
    _pairs_to_json_dict,
    _shift_word_idxs,
    _validated_prompts,
    _warn_unknown_tokens,
)
from edgewise.data.tokens import _as_answers, _as_tokens, _check_token_ids, _is_token_id


def _rows(prompts: Sequence[Any] | Tensor, name: str) -> list[Any]:
    if isinstance(prompts, Tensor):
        if prompts.dim() != 2:
            raise ValueError(f"{name} as a tensor must be 2-D [n, seq], got {tuple(prompts.shape)}")
        return list(prompts.unbind(0))
    return list(prompts)


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
        padding_side: ``"left"`` (above) or ``"right"``: the prompts stay ragged and a
            :class:`PromptDataLoader` right-pads each batch with ``pad_id``, recording
            every prompt's length so that its output is read at its own last token
            (exact: see :mod:`edgewise.data.batches`; MIB's padding).
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
        padding_side: how a loader pads batches of this dataset.
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
        padding_side: PaddingSide = "left",
    ) -> None:
        check_padding_side(padding_side)
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
            _check_token_ids(torch.tensor([pad_id]), vocab_size, "pad_id")

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
                    _check_token_ids(tensors[name][i], vocab_size, f"prompt {i}: {name}")

        self.lengths: Tensor = torch.tensor([int(c.shape[0]) for c in tensors["clean"]])
        self.pad_id: int | None = pad_id
        self.padding_side: PaddingSide = padding_side
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
        elif pad_id is not None and padding_side == "left":
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
        n_ctx: int | None = None,
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
            n_ctx: the model's context: a prompt with more tokens is an error (checked
                right after tokenizing, before the rest of the file).

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
        too_long = [(name, len(c)) for name, c in zip(names, clean) if n_ctx and len(c) > n_ctx]
        if too_long:
            raise ValueError(
                f"{len(too_long)} prompt(s) have more tokens than the model's context "
                f"(n_ctx={n_ctx}), the longest {max(n for _, n in too_long)} (e.g. "
                f"{too_long[0][0]}); shorten them or use a model with a longer context"
            )
        for name, c, k in zip(names, clean, corrupt):
            _check_token_ids(c, vocab_size, f"{name}: clean")
            _check_token_ids(k, vocab_size, f"{name}: corrupt")
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
        n_positions = max(lengths)  # the common length, or the padded one
        seq_labels = _checked_seq_labels(data.get("seq_labels"), n_positions, bos_added)
        word_idxs = _checked_word_idxs(data.get("word_idxs"), n_positions, bos_added)
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
        pad_id: pad a batch's prompts of different lengths with this id; default the
            dataset's ``pad_id``.
        padding_side: ``"left"`` (attended to, with a warning) or ``"right"`` (exact;
            each batch records its prompts' lengths, see :mod:`edgewise.data.batches`);
            default the dataset's ``padding_side`` (else ``"left"``).
        seq_labels: label per token position; default the dataset's.
        word_idxs: ``{word: position}``; default the dataset's.
        kv_cache: a frozen key/value cache of the cut-off prefix, built for
            ``batch_size`` rows: TransformerLens' key-value cache for a
            ``HookedTransformer`` (pass it as ``past_kv_cache`` when running batches), a
            :class:`~edgewise.models.bridge_blocks.BridgePrefixCache` for a
            ``TransformerBridge`` (run batches inside
            :func:`~edgewise.models.bridge_blocks.after_prefix`). Either works as
            ``patchable_model(..., kv_caches=...)``.
        drop_last: drop the last incomplete batch (default ``True``, as in auto-circuit,
            so every batch has ``batch_size`` rows).
        name: what the loader holds, for error messages (e.g. ``"the train split of
            ioi.json"``); default ``"the dataloader"``.
        **kwargs: passed to ``torch.utils.data.DataLoader`` (not ``collate_fn``).

    Attributes:
        seq_len, diverge_idx, seq_labels, word_idxs, kv_cache, pad_id, padding_side,
        name: as above.
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
        padding_side: PaddingSide | None = None,
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
            padding_side = base.padding_side if padding_side is None else padding_side
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
        padding_side = padding_side or "left"
        check_padding_side(padding_side)
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
            collate_fn=partial(collate_prompt_pairs, pad_id=pad_id, seq_len=seq_len,
                               padding_side=padding_side),
            **kwargs,
        )
        self.seq_len: int | None = seq_len
        self.diverge_idx: int = diverge_idx
        self.pad_id: int | None = pad_id
        self.padding_side: PaddingSide = padding_side
        self.seq_labels: list[str] | None = None if seq_labels is None else list(seq_labels)
        self.word_idxs: dict[str, int] = dict(word_idxs or {})
        self.kv_cache: Any = kv_cache
        self.name: str = name
