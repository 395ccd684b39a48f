"""Named tasks and models for the command line and the demo.

A task says how a behaviour is measured: its prompt data, which output positions
count, the objective gradients follow, and (when known) its official circuit. Any
dataset JSON in the auto-circuit format is a task too (logit difference at the last
position).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgewise.data import PromptDataLoader, load_datasets_from_json, shipped_dataset_names
from edgewise.patching.model import PatchableModel
from edgewise.types import Edge

Loaders = tuple[PromptDataLoader, PromptDataLoader]


@dataclass(frozen=True)
class Task:
    """How to measure one behaviour.

    Attributes:
        name: registry name (or the JSON path for a dataset task).
        model: the default model name for this task.
        slice_output: output positions that count (see ``patchable_model``).
        grad_function / answer_function: the objective of gradient-based scores.
        token_positions: build the graph with one edge per token position.
        metric: ``"logit_diff"`` or ``"mse"``: what faithfulness is measured with.
        dataloaders: ``(model, batch_size) -> (train, test)``.
        official_edges: the known circuit of a patchable model, if any.
    """

    name: str
    model: str
    slice_output: str
    grad_function: str
    answer_function: str
    token_positions: bool
    metric: str
    dataloaders: Callable[[Any, int], Loaders]
    official_edges: Callable[[PatchableModel], set[Edge]] | None = None
    description: str = ""


def _toy_ioi_loaders(model: Any, batch_size: int) -> Loaders:
    from edgewise.benchmarks.toy_models import toy_ioi_dataloaders

    return toy_ioi_dataloaders(model, batch_size=batch_size, train_test_size=(64, 64), shuffle=False)


def _toy_ioi_official(model: PatchableModel) -> set[Edge]:
    from edgewise.benchmarks.official.toy_ioi import toy_ioi_official_edges

    return toy_ioi_official_edges(model)


def _tracr_loaders(task: str) -> Callable[[Any, int], Loaders]:
    def loaders(model: Any, batch_size: int) -> Loaders:
        from edgewise.benchmarks.tracr_models import tracr_dataloaders

        return tracr_dataloaders(task, batch_size=batch_size, shuffle=False)  # type: ignore[arg-type]

    return loaders


def _tracr_official(task: str) -> Callable[[PatchableModel], set[Edge]]:
    def official(model: PatchableModel) -> set[Edge]:
        from edgewise.benchmarks.official.tracr import tracr_official_edges

        return tracr_official_edges(model, task, "resample")  # type: ignore[arg-type]

    return official


TASKS: dict[str, Task] = {
    "toy_ioi": Task("toy_ioi", "toy-ioi", "last_seq", "logit", "avg_diff", True, "logit_diff",
                    _toy_ioi_loaders, _toy_ioi_official,
                    "indirect object identification on the shipped toy model"),
    "tracr_reverse": Task("tracr_reverse", "tracr-reverse", "not_first_seq", "logit", "avg_diff",
                          False, "logit_diff", _tracr_loaders("reverse"), _tracr_official("reverse"),
                          "tracr's compiled sequence reversal (needs edgewise[tracr])"),
    "tracr_xproportion": Task("tracr_xproportion", "tracr-xproportion", "not_first_seq", "logit",
                              "mse", False, "mse", _tracr_loaders("xproportion"),
                              _tracr_official("xproportion"),
                              "tracr's compiled fraction of previous 'x' tokens (needs edgewise[tracr])"),
}


def dataset_task(path_or_name: str) -> Task:
    """A task over a dataset JSON (a path, or the name of a shipped dataset)."""

    def loaders(model: Any, batch_size: int, token_positions: bool = False) -> Loaders:
        # token_positions: the loaders carry the prompts' common length (one is required)
        return load_datasets_from_json(model, path_or_name, batch_size=batch_size,
                                       train_test_size=(0.5, 0.5), shuffle=False,
                                       return_seq_length=token_positions)

    return Task(path_or_name, "", "last_seq", "logit", "avg_diff", False, "logit_diff", loaders,
                description=f"logit difference on {path_or_name}")


def get_task(name: str) -> Task:
    """A registered task, or a dataset task for a JSON path or shipped dataset name.

    Raises:
        FileNotFoundError: ``name`` looks like a file (``.json``, a path) that is not there.
        ValueError: any other unknown name (with a "did you mean" when one is close)."""
    if name in TASKS:
        return TASKS[name]
    if Path(name).is_file() or name in shipped_dataset_names():
        return dataset_task(name)
    from edgewise.runtime.resolve import did_you_mean, looks_like_path

    if name.lower().endswith((".json", ".jsonl")) or looks_like_path(name) or Path(name).exists():
        what = "a folder, not a dataset file" if Path(name).is_dir() else "no such file"
        raise FileNotFoundError(f"task {name!r}: {what}. Give a dataset JSON file, or a "
                                f"task name: {', '.join(TASKS)}")  # fmt: skip
    raise ValueError(
        f"unknown task {name!r}{did_you_mean(name, [*TASKS, *shipped_dataset_names()])}. "
        f"Tasks: {', '.join(TASKS)}; or a dataset JSON file; "
        f"shipped datasets: {', '.join(shipped_dataset_names())}"
    )


def check_model_name(name: str) -> None:
    """Check, without loading anything, that :func:`load_model` can try ``name``: a
    shipped model, a tracr program, a readable local model folder, or a TransformerLens
    or Hugging Face hub name (in the cache when ``HF_HUB_OFFLINE`` is set). Raises
    ``ValueError`` (``FileNotFoundError`` for a missing folder) naming ``name`` and the
    fix (:func:`edgewise.runtime.resolve.check_model`)."""
    from edgewise.runtime.resolve import check_model

    check_model(name)


def model_names() -> list[str]:
    """Names :func:`load_model` knows besides paths and TransformerLens names."""
    from edgewise.benchmarks.toy_models import available

    return [*available(), "tracr-reverse", "tracr-xproportion"]


def load_model(name: str, device: str = "cpu", kind: str | None = None, dtype: Any = None) -> Any:
    """A model by name: a model the package ships (``toy-ioi``), a tracr program
    (``tracr-reverse``), a local Hugging Face directory, a TransformerLens name or a
    Hugging Face hub repository id (downloaded into the Hugging Face cache unless
    ``HF_HUB_OFFLINE`` is set), of ``kind`` on ``device`` in ``dtype`` (float32 when
    ``None``): :func:`edgewise.runtime.resolve.load_model`."""
    from edgewise.runtime.resolve import load_model as resolve_and_load

    return resolve_and_load(name, kind=kind, device=device, dtype=dtype)
