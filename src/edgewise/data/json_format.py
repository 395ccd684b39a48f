"""The JSON prompt format: checking a parsed file's prompts, turning their text and
answers into token ids, and writing prompt pairs back.

Format (the public auto-circuit dataset format)::

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
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from edgewise.data.batches import PromptPair
from edgewise.data.tokens import _MAX_TOKEN_ID, _is_token_id

_PROMPT_FIELDS = ("clean", "corrupt", "answers", "wrong_answers")
_TOP_KEYS = ("prompts", "seq_labels", "word_idxs")


def _unknown_keys(keys: Iterable[Any], allowed: Sequence[str], where: str) -> None:
    """A ``ValueError`` naming the first of ``keys`` not in ``allowed`` (with the close
    allowed key it is probably a typo of), so a misspelt field is not silently ignored."""
    unknown = [k for k in keys if k not in allowed]
    if not unknown:
        return
    key = unknown[0]
    close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    more = f" and {len(unknown) - 1} more unknown key(s)" if len(unknown) > 1 else ""
    raise ValueError(
        f"{where}: unknown key {key!r}{hint}{more}; the keys are "
        f"{', '.join(map(repr, allowed))}. Rename or remove it."
    )


def _validated_prompts(
    data: Mapping[str, Any], names: Sequence[str] | None = None, source: str | None = None
) -> list[Mapping[str, Any]]:
    """``data["prompts"]``, after checking that ``data`` has no key but ``"prompts"``,
    ``"seq_labels"`` and ``"word_idxs"``, and that each prompt is an object with exactly
    the four fields and string or token-id prompts; errors name a prompt by ``names[i]``
    (default ``"prompt i"``) and the file by ``source``."""
    if not isinstance(data, Mapping) or "prompts" not in data:
        raise ValueError('a prompt dataset must be a JSON object with a "prompts" list')
    _unknown_keys(data, _TOP_KEYS, f"{source}: the top-level object" if source else
                  "the dataset's top-level object")  # fmt: skip
    prompts = data["prompts"]
    if not isinstance(prompts, list) or len(prompts) == 0:
        raise ValueError('"prompts" must be a non-empty list')
    if names is not None and len(names) != len(prompts):
        raise ValueError(f"{len(names)} prompt_names for {len(prompts)} prompts")
    for i, p in enumerate(prompts):
        name = names[i] if names is not None else f"prompt {i}"
        if not isinstance(p, Mapping):
            raise ValueError(f"{name}: expected an object, got {type(p).__name__} {p!r:.80}")
        _unknown_keys(p, _PROMPT_FIELDS, name)
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


def _checked_seq_labels(seq_labels: Any, n_positions: int, bos: bool) -> list[str] | None:
    """``seq_labels`` as given in a file, checked to be one string per position of the
    prompts (their common length, or the padded length, ``n_positions``, which counts the
    BOS edgewise prepends when ``bos``)."""
    if seq_labels is None:
        return None
    if not (isinstance(seq_labels, list) and all(isinstance(x, str) for x in seq_labels)):
        bad = seq_labels if not isinstance(seq_labels, list) else next(
            x for x in seq_labels if not isinstance(x, str))
        raise ValueError(f'"seq_labels" must be a list of strings, one label per position; '
                         f"found {bad!r:.60}")  # fmt: skip
    want = n_positions - int(bos)
    if len(seq_labels) != want:
        raise ValueError(
            f'"seq_labels" has {len(seq_labels)} labels but the prompts have {want} token '
            "positions" + (" (without the BOS edgewise prepends)" if bos else "")
            + "; give one label per position, or remove \"seq_labels\""
        )
    return list(seq_labels)


def _checked_word_idxs(word_idxs: Any, n_positions: int, bos: bool) -> dict[str, int]:
    """``word_idxs`` as given in a file, checked to map names to int positions within
    the prompts' ``n_positions`` positions (counting a prepended BOS when ``bos``)."""
    if word_idxs is None:
        return {}
    if not isinstance(word_idxs, Mapping):
        raise ValueError(f'"word_idxs" must be an object {{word: position}}, got {word_idxs!r:.60}')
    n = n_positions - int(bos)
    for name, idx in word_idxs.items():
        if not _is_token_id(idx):
            raise ValueError(f'"word_idxs"[{name!r}] must be an int token position, got {idx!r:.60}')
        if not 0 <= idx < n:
            raise ValueError(
                f'"word_idxs"[{name!r}] = {idx} is not a token position of the prompts '
                f"(0..{n - 1}" + (", without the BOS edgewise prepends" if bos else "")
                + "); fix the position or remove the entry"
            )
    return dict(word_idxs)


def _shift_word_idxs(word_idxs: dict[str, Any], shift: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, idx in word_idxs.items():
        if not _is_token_id(idx):
            raise ValueError(f"word_idxs[{name!r}] must be an int position, got {idx!r}")
        if idx + shift >= 0:
            out[name] = idx + shift
    return out


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
