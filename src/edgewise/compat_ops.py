"""auto-circuit 1.0.1's small helpers (``auto_circuit.utils.tensor_ops``,
``auto_circuit.metrics.area_under_curve``, ``auto_circuit.utils.misc``) under their names,
so that code calling them ports by changing its imports (``docs/auto_circuit.md``).

Every batch helper takes ``vals`` ``[batch, vocab]`` (a function of the logits at the
output position) and a :class:`~edgewise.data.PromptPairBatch` whose answers are a
tensor ``[batch, n_answers]`` or a list of per-prompt tensors (different counts).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from edgewise.data import PromptPairBatch
from edgewise.metrics.answers import batch_answer_diffs
from edgewise.metrics.faithfulness import measurements_auc
from edgewise.types import Measurements

# ------------------------------------------------------------------ auto_circuit.utils.tensor_ops


def indices_vals(vals: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``vals`` at ``indices`` along the last dimension (the same number of dimensions)."""
    if vals.ndim != indices.ndim:
        raise ValueError(f"indices_vals: vals has {vals.ndim} dimensions and indices {indices.ndim}; "
                         "give indices one per row of vals, e.g. answers [batch, n_answers]")  # fmt: skip
    return torch.gather(vals, dim=-1, index=indices)


def vocab_avg_val(vals: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The mean of ``vals`` at ``indices`` (a 0-d tensor)."""
    return indices_vals(vals, indices).mean()


def _answers(batch: PromptPairBatch, wrong: bool) -> Any:
    return batch.wrong_answers if wrong else batch.answers


def batch_avg_answer_val(vals: torch.Tensor, batch: PromptPairBatch, wrong_answer: bool = False) -> torch.Tensor:
    """The mean of ``vals`` at the batch's answers (or wrong answers): over every
    (prompt, answer) for a tensor of answers, else the mean of the prompts' means."""
    answers = _answers(batch, wrong_answer)
    if isinstance(answers, torch.Tensor):
        return vocab_avg_val(vals, answers)
    return torch.stack([vocab_avg_val(v, a) for v, a in zip(vals, answers)]).mean()


def batch_avg_answer_diff(vals: torch.Tensor, batch: PromptPairBatch) -> torch.Tensor:
    """The mean over the batch of :func:`batch_answer_diffs` (a 0-d tensor)."""
    return batch_answer_diffs(vals, batch).mean()


def batch_answer_diff_percents(pred_vals: torch.Tensor, target_vals: torch.Tensor,
                               batch: PromptPairBatch) -> torch.Tensor:  # fmt: skip
    """Per prompt ``[batch]``: ``100 * diff(pred_vals) / diff(target_vals)``, the answer
    differences of :func:`batch_answer_diffs`."""
    return batch_answer_diffs(pred_vals, batch) / batch_answer_diffs(target_vals, batch) * 100


def _one_answer(answers: Any, who: str) -> None:
    shapes = {tuple(a.shape[-1:]) for a in answers} if isinstance(answers, list) else {tuple(answers.shape[-1:])}
    if shapes != {(1,)}:
        raise ValueError(f"{who} needs exactly one answer per prompt, got answer counts "
                         f"{sorted(s[0] for s in shapes)}")  # fmt: skip


def correct_answer_proportion(logits: torch.Tensor, batch: PromptPairBatch) -> torch.Tensor:
    """The fraction of prompts whose answer is the top token of ``logits`` ``[batch, vocab]``
    (one answer per prompt; the first maximum wins a tie, as ``argmax``)."""
    _one_answer(batch.answers, "correct_answer_proportion")
    answers = batch.answers if isinstance(batch.answers, torch.Tensor) else torch.stack(batch.answers)
    return (logits.argmax(dim=-1, keepdim=True) == answers).to(logits.dtype).mean()


def correct_answer_greater_than_incorrect_proportion(logits: torch.Tensor, batch: PromptPairBatch) -> torch.Tensor:
    """The fraction of prompts whose answer's logit is at least every wrong answer's
    (one answer per prompt; a tie counts as correct, as ``argmax`` picks the answer first)."""
    _one_answer(batch.answers, "correct_answer_greater_than_incorrect_proportion")
    right = [indices_vals(v, a) for v, a in zip(logits, batch.answers)]
    wrong = [indices_vals(v, w) for v, w in zip(logits, batch.wrong_answers)]
    wins = [(r >= w.max()) if w.numel() else torch.tensor(True) for r, w in zip(right, wrong)]
    return torch.stack([x.reshape(()) for x in wins]).to(logits.dtype).mean()


def multibatch_kl_div(input_logprobs: torch.Tensor, target_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(target || input) summed over the last dimension and averaged over all others
    (both are log probabilities of the same shape)."""
    if input_logprobs.shape != target_logprobs.shape:
        raise ValueError(f"multibatch_kl_div: shapes {tuple(input_logprobs.shape)} and "
                         f"{tuple(target_logprobs.shape)} differ")  # fmt: skip
    total = (target_logprobs.exp() * (target_logprobs - input_logprobs)).sum()
    return total / math.prod(input_logprobs.shape[:-1])


# ------------------------------------------------------------ auto_circuit.metrics.area_under_curve


def algo_measurements_auc(algo_measurements: Mapping[str, Measurements], log_x: bool, log_y: bool,
                          y_min: float | None = None) -> dict[str, float]:  # fmt: skip
    """:func:`~edgewise.measurements_auc` of each algorithm's curve (curves of one point
    are left out, as in auto-circuit)."""
    return {algo: measurements_auc(m, log_x, log_y, y_min) for algo, m in algo_measurements.items() if len(m) > 1}


def task_measurements_auc(task_measurements: Mapping[str, Mapping[str, Measurements]], log_x: bool,
                          log_y: bool, y_min: float | None = None) -> dict[str, dict[str, float]]:  # fmt: skip
    """:func:`algo_measurements_auc` per task."""
    return {task: algo_measurements_auc(m, log_x, log_y, y_min) for task, m in task_measurements.items()}


def metric_measurements_auc(points: Mapping[str, Mapping[str, Mapping[str, Measurements]]], log_x: bool,
                            log_y: bool, y_min: float | None = None) -> dict[str, dict[str, dict[str, float]]]:  # fmt: skip
    """:func:`task_measurements_auc` per metric."""
    return {metric: task_measurements_auc(m, log_x, log_y, y_min) for metric, m in points.items()}


# ----------------------------------------------------------------------- auto_circuit.utils.misc


def save_cache(data_dict: dict[Any, Any], folder_name: str | os.PathLike[str], base_filename: str) -> Path:
    """Save ``data_dict`` (tensors, numbers, strings, lists and dicts of them) with
    ``torch.save`` to ``folder_name/base_filename-DD-MM-YYYY_HH-MM-SS.pkl`` and return the
    path. ``folder_name`` is relative to the working directory (auto-circuit's is relative
    to its source checkout). The file appears whole or not at all."""
    folder = Path(folder_name)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{base_filename}-{datetime.now().strftime('%d-%m-%Y_%H-%M-%S')}.pkl"
    tmp = path.with_name(path.name + ".tmp")
    torch.save(data_dict, tmp)
    os.replace(tmp, path)
    print(f"Saving cache to {path}")
    return path


def load_cache(folder_name: str | os.PathLike[str], filename: str) -> dict[Any, Any]:
    """Load a file :func:`save_cache` wrote (``folder_name/filename``). Only tensors and
    plain Python values are unpickled (``torch.load(weights_only=True)``)."""
    path = Path(folder_name) / filename
    if not path.is_file():
        raise FileNotFoundError(f"no cache file {path}; save_cache names files "
                                "BASE-DD-MM-YYYY_HH-MM-SS.pkl, give that name")  # fmt: skip
    return torch.load(path, weights_only=True)


__all__ = [
    "indices_vals", "vocab_avg_val", "batch_avg_answer_val", "batch_answer_diffs", "batch_avg_answer_diff",
    "batch_answer_diff_percents", "correct_answer_proportion", "correct_answer_greater_than_incorrect_proportion",
    "multibatch_kl_div", "algo_measurements_auc", "task_measurements_auc", "metric_measurements_auc",
    "save_cache", "load_cache",
]
