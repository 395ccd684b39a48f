"""Prompt data for circuit discovery: clean/corrupt prompt pairs, batching and JSON I/O.

A circuit is found by comparing a model on a *clean* prompt with the same model on a
*corrupt* prompt that differs from it in a few tokens. Each pair carries the token ids
of its correct ``answers`` and of its ``wrong_answers`` (usually the corrupt prompt's
answers).

Modules (everything public is re-exported here; import it from ``edgewise.data``):

- :mod:`~edgewise.data.batches`: :class:`PromptPair`, :class:`PromptPairBatch`, batch
  keys, divergence, padding and collation. Left padding is **not** masked (no attention
  mask, as in auto-circuit), so it always warns; right padding (MIB's) reads each
  prompt at its own last token and is exact; see that module.
- :mod:`~edgewise.data.dataset`: :class:`PromptDataset` and :class:`PromptDataLoader`.
- :mod:`~edgewise.data.json_format`: the JSON dataset format (auto-circuit's) and how
  its text prompts and answers become token ids.
- :mod:`~edgewise.data.loading`: shipped datasets, :func:`load_dataset_json`,
  :func:`save_dataset_json` and :func:`load_datasets_from_json`.
- :mod:`~edgewise.data.checks`: the checks scoring functions make before their first
  forward pass (:func:`checked_batches` and the functions it runs).
- :mod:`~edgewise.data.tokens`: token-id conversion and vocabulary checks.
"""

from __future__ import annotations

from edgewise.data.batches import (
    PromptPair,
    PromptPairBatch,
    batch_key,
    batch_output,
    collate_fn,
    collate_prompt_pairs,
    first_divergence,
    left_pad,
    right_pad,
    select_output,
)
from edgewise.data.checks import (
    check_answer_ids,
    check_batches_for_model,
    check_right_padding,
    checked_batches,
    loader_batches,
    refuse_padded_means,
    require_batches,
    require_full_prompts,
    warn_if_uncorrupted,
)
from edgewise.data.dataset import PromptDataLoader, PromptDataset
from edgewise.data.loading import _datasets_root as _datasets_root
from edgewise.data.loading import (
    load_dataset_json,
    load_datasets_from_json,
    save_dataset_json,
    shipped_dataset_names,
)
from edgewise.types import BatchKey

__all__ = [
    "BatchKey",
    "PromptDataLoader",
    "PromptDataset",
    "PromptPair",
    "PromptPairBatch",
    "batch_key",
    "batch_output",
    "check_answer_ids",
    "check_batches_for_model",
    "check_right_padding",
    "checked_batches",
    "collate_fn",
    "collate_prompt_pairs",
    "first_divergence",
    "left_pad",
    "right_pad",
    "select_output",
    "load_dataset_json",
    "load_datasets_from_json",
    "loader_batches",
    "refuse_padded_means",
    "require_batches",
    "require_full_prompts",
    "save_dataset_json",
    "shipped_dataset_names",
    "warn_if_uncorrupted",
]
