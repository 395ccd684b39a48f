"""The checks a scoring function makes once, before its first forward pass: its loader
yields batches, the batches fit the model (lengths, token ids, answers), clean and
corrupt prompts differ, and prompts cut after a shared prefix run after that prefix's
cache; and :func:`scoring_entry`, which every public function that runs a model over a
dataloader wears: it reads a one-pass iterator once (so no batch is lost to a check)
and runs the model in eval mode (dropout off)."""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

from edgewise.checks import eval_mode
from edgewise.data.batches import LAST_SEQ, PromptPairBatch
from edgewise.data.tokens import _is_token_id

_F = TypeVar("_F", bound=Callable[..., Any])
_LOADER_PARAMS = ("dataloader", "loader", "train_loader", "test_loader")


class OnePassBatches(list):  # type: ignore[type-arg]
    """The batches of a one-pass iterator (e.g. a generator), read once into a list so
    that a function can go over them as often as it needs (checks, ablation means,
    integration steps). It has a loader's attributes with the values of a plain one:
    ``seq_len=None``, ``diverge_idx=0``, ``kv_cache=None``, and a ``name`` for errors."""

    seq_len: int | None = None
    diverge_idx: int = 0
    kv_cache: Any = None

    def __init__(self, batches: Iterable[Any], name: str) -> None:
        super().__init__(batches)
        self.name = name


def reiterable(dataloader: Any, who: str) -> Any:
    """``dataloader`` itself when it can be iterated again (a ``PromptDataLoader``, a list
    of batches); a one-pass iterator (a generator, ``iter(loader)``, ``map(...)``) read
    once, whole, into :class:`OnePassBatches`. A ``TypeError`` naming ``who`` for
    something that is not iterable at all."""
    if isinstance(dataloader, Iterator):
        kind = type(dataloader).__name__
        return OnePassBatches(dataloader, f"the one-pass iterator ({kind}) given to {who}")
    if not isinstance(dataloader, Iterable):
        raise TypeError(
            f"{who}: the dataloader must be a PromptDataLoader or another iterable of "
            f"PromptPairBatch, got {type(dataloader).__name__}; build one with "
            "load_datasets_from_json(...) or PromptDataLoader(PromptDataset(...))"
        )
    return dataloader


def scoring_entry(fn: _F) -> _F:
    """Decorate a public function that runs ``model`` over a dataloader (its parameter
    named ``dataloader``, ``loader``, ``train_loader`` or ``test_loader``): a one-pass
    iterator given there is read once into :class:`OnePassBatches` (:func:`reiterable`),
    so the function sees every batch however often it iterates, and the model runs in
    eval mode (:func:`eval_mode`) for the call."""
    sig = inspect.signature(fn)
    loaders = [p for p in _LOADER_PARAMS if p in sig.parameters]
    who = fn.__name__

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError:  # let Python say what is wrong with the call
            return fn(*args, **kwargs)
        for p in loaders:
            if bound.arguments.get(p) is not None:
                bound.arguments[p] = reiterable(bound.arguments[p], who)
        with eval_mode(bound.arguments.get("model"), who):
            return fn(*bound.args, **bound.kwargs)

    wrapper.__edgewise_entry__ = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def require_batches(dataloader: Any, who: str) -> None:
    """A ``ValueError`` naming the loader (its ``name``, e.g. the split and file) and
    ``who`` (the function) when ``dataloader`` yields no batches, since every score or
    output would then be silently empty or zero. A one-pass iterator is a ``TypeError``
    (looking at its first batch would lose it): :func:`scoring_entry` functions never
    get one, and a caller of this function reads it with :func:`reiterable` first."""
    if isinstance(dataloader, Iterator):
        raise TypeError(
            f"{who}: the dataloader is a one-pass iterator ({type(dataloader).__name__}), which "
            "would be half-read by the checks; pass a PromptDataLoader or a list of batches "
            "(list(...) of the iterator)"
        )
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
    model: Any,
    batches: Sequence[PromptPairBatch],
    who: str,
    answer_function: str | None = None,
    right_padded: bool = False,
) -> None:
    """Check once, before any forward pass, that ``batches`` fit ``model``: prompt
    lengths (the model's context, and its ``seq_len`` when edges are per position), token
    ids within the model's vocabulary, and, for ``answer_function`` ``"avg_diff"`` or
    ``"avg_val"``, answers that are non-empty integer ids within its output vocabulary.
    A dataset loaded with ``model=None`` was checked against no vocabulary, so this is
    where its ids meet the model. Right-padded batches (``PromptPairBatch.lengths``) are
    refused unless ``who`` reads each prompt at its own last token (``right_padded``),
    and then need a model that reads the last position and has no per-position edges.
    Errors name ``who`` and the fix."""
    cfg = getattr(model, "cfg", None)
    check_tokens = getattr(model, "check_tokens", None)
    check_right_padding(model, batches, who, right_padded)
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


def check_right_padding(
    model: Any, batches: Sequence[PromptPairBatch], who: str, supported: bool
) -> None:
    """Raise unless right-padded batches (prompts of different lengths, each read at its
    own last token) meet a function that reads them so (``supported``), a model reading
    the last position (``slice_output="last_seq"``) and a graph without token positions."""
    padded = sum(getattr(b, "lengths", None) is not None for b in batches)
    if not padded:
        return
    what = (f"{who}: {padded} of {len(batches)} batches are right-padded (prompts of different "
            "lengths, each read at its own last token)")
    if not supported:
        raise ValueError(
            f"{what}, which {who} does not read that way. Use an algorithm that does (eap, ig, "
            "ig-layer, eap-ig-inputs, eap-ig-activations, clean-corrupted, node attribution, "
            "run_circuits), or give it prompts of one length (edgewise.mib.data.split_by_length)"
        )
    out_slice = getattr(model, "out_slice", None)
    if out_slice is not None and tuple(out_slice) != LAST_SEQ:
        raise ValueError(
            f"{what}, which needs a model reading the last position; it reads {out_slice!r}. "
            "Wrap it with patchable_model(..., slice_output='last_seq')"
        )
    if getattr(model, "seq_len", None) is not None:
        raise ValueError(
            f"{what}, but the model has edges per token position (seq_len={model.seq_len}), "
            "which need prompts of one length: wrap it with seq_len=None"
        )


def refuse_padded_means(batches: Sequence[PromptPairBatch], ablation_type: Any, who: str) -> None:
    """A ``ValueError`` for a mean ablation over right-padded batches: the means over
    positions (or over prompts at one position) would average padding in."""
    from edgewise.types import AblationType

    kind = AblationType(ablation_type)
    if (kind.mean_over_batch or kind.mean_over_dataset) and any(
        getattr(b, "lengths", None) is not None for b in batches
    ):
        raise ValueError(
            f"{who}: {kind.value} averages source outputs over positions or prompts, and these "
            "right-padded batches would average their padding in; use resample or zero "
            "ablation (or fixed ablation_values), or prompts of one length"
        )


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
    right_padded: bool = False,
) -> list[PromptPairBatch]:
    """The batches of ``dataloader``, after the checks every scoring function makes
    once before its first forward pass: :func:`loader_batches` (not empty),
    :func:`check_batches_for_model` (lengths, token ids, answers; right-padded batches
    only for a function that reads them, ``right_padded``) and, when ablated edges carry
    the corrupt run's activations, :func:`warn_if_uncorrupted`."""
    batches = loader_batches(dataloader, who)
    check_batches_for_model(model, batches, who, answer_function, right_padded)
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
