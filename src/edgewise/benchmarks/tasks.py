"""Named tasks and models for the command line and the demo.

A task says how a behaviour is measured: its prompt data, which output positions
count, the objective gradients follow, and (when known) its official circuit. Any
dataset JSON in the auto-circuit format is a task too (logit difference at the last
position).
"""

from __future__ import annotations

import os
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
    """A registered task, or a dataset task for a JSON path or shipped dataset name."""
    if name in TASKS:
        return TASKS[name]
    if Path(name).is_file() or name in shipped_dataset_names():
        return dataset_task(name)
    raise ValueError(
        f"unknown task {name!r}. Tasks: {', '.join(TASKS)}; or a dataset JSON file; "
        f"shipped datasets: {', '.join(shipped_dataset_names())}"
    )


def check_model_name(name: str) -> None:
    """Check, without loading anything, that :func:`load_model` can load ``name``: a
    shipped model, a tracr program, a readable local model folder
    (:func:`edgewise.models.files.check_model_dir`), or a name whose Hugging Face files
    are already on this machine. Raises ``ValueError`` naming ``name`` and the fix."""
    from edgewise.benchmarks.toy_models import available

    if name in available() or name in model_names():
        return
    if name.startswith("tracr-"):
        raise ValueError(f"unknown tracr model {name!r}; the tracr models are "
                         f"{', '.join(n for n in model_names() if n.startswith('tracr-'))}")
    if os.path.isdir(name):
        from edgewise.models.files import check_model_dir

        check_model_dir(name)
        return
    if os.path.exists(name):
        raise ValueError(f"model {name!r} is a file: pass the folder holding its config.json "
                         "and weights (a Hugging Face save_pretrained folder)")
    if not _downloaded(name):
        raise ValueError(
            f"cannot load model {name!r}: it is not a shipped model, not a local folder, and no "
            f"Hugging Face model of that name is on this machine. Models: "
            f"{', '.join(model_names())}, a local Hugging Face folder, or a TransformerLens "
            "name whose weights are already downloaded (edgewise never downloads)."
        )


def _downloaded(name: str) -> bool:
    """Whether the Hugging Face cache holds a ``config.json`` for ``name`` (or for the
    repository TransformerLens maps it to, e.g. ``gpt2-small`` to ``gpt2``)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # cannot tell: loading will say
        return True
    def cached(repo: str) -> bool:
        try:
            return isinstance(try_to_load_from_cache(repo, "config.json"), str)
        except Exception:  # not a valid repository id
            return False

    if cached(name):
        return True
    try:  # a TransformerLens alias (importing TransformerLens takes a while: only now)
        from transformer_lens.loading_from_pretrained import get_official_model_name

        official = get_official_model_name(name)
    except Exception:  # not a TransformerLens name (or no such table)
        return False
    return official != name and cached(official)


def model_names() -> list[str]:
    """Names :func:`load_model` knows besides paths and TransformerLens names."""
    from edgewise.benchmarks.toy_models import available

    return [*available(), "tracr-reverse", "tracr-xproportion"]


def load_model(name: str, device: str = "cpu") -> Any:
    """A model by name: a model the package ships (``toy-ioi``), a tracr program
    (``tracr-reverse``), a local Hugging Face directory, or a TransformerLens model
    name whose weights are already on this machine (nothing is downloaded)."""
    from edgewise.benchmarks.toy_models import available, load

    if name in available():
        return load(name, device=device)
    if name.startswith("tracr-"):
        from edgewise.benchmarks.tracr_models import compile_tracr

        return compile_tracr(name.removeprefix("tracr-"), device=device)[0]  # type: ignore[arg-type]
    if os.path.isdir(name):
        from edgewise.models.kinds import load_hf_bridge

        return load_hf_bridge(name, device=device)
    try:
        from edgewise.models.kinds import load_pretrained

        return load_pretrained(name, device=device)
    except Exception as e:
        raise ValueError(
            f"cannot load model {name!r}: {type(e).__name__}: {str(e)[:200]}. Models: "
            f"{', '.join(model_names())}, a local Hugging Face directory, or a TransformerLens "
            "name whose weights are already downloaded (edgewise never downloads)."
        ) from None
