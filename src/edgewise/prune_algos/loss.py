"""The differentiable objectives that gradient-based scores take the gradient of."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from edgewise.data import PromptPairBatch
from edgewise.metrics.answers import apply_prob_func, batch_answer_diffs, batch_answer_vals

GradFunction = Literal["logit", "prob", "logprob", "logit_exp"]
AnswerFunction = Literal["avg_diff", "avg_val", "mse"]


def check_loss_functions(grad_function: str, answer_function: str) -> None:
    """A ``ValueError`` naming the parameter for an unknown ``grad_function`` or
    ``answer_function``, before any forward pass (the loss is computed only after one)."""
    for name, value, choices in (("grad_function", grad_function, GradFunction),
                                 ("answer_function", answer_function, AnswerFunction)):  # fmt: skip
        if value not in choices.__args__:  # type: ignore[attr-defined]
            allowed = ", ".join(repr(c) for c in choices.__args__)  # type: ignore[attr-defined]
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def grad_values(logits: torch.Tensor, grad_function: GradFunction) -> torch.Tensor:
    """``logit``: the logits; ``prob``: softmax; ``logprob``: log-softmax (as
    :func:`~edgewise.metrics.answers.apply_prob_func`); ``logit_exp``:
    ``exp(logits) / sum(exp(logits))`` with the denominator detached."""
    if grad_function == "logit_exp":
        shifted = logits - logits.max(dim=-1, keepdim=True).values.detach()
        numerator = torch.exp(shifted)
        return numerator / numerator.sum(dim=-1, keepdim=True).detach()
    check_loss_functions(grad_function, "avg_diff")
    return apply_prob_func(logits, grad_function)


def answer_loss(
    vals: torch.Tensor, batch: PromptPairBatch, answer_function: AnswerFunction
) -> torch.Tensor:
    """Scalar loss of output values ``[batch, (seq,) vocab]``.

    ``avg_diff``: minus the mean of (mean over answers minus mean over wrong answers);
    ``avg_val``: minus the mean of the mean over answers; ``mse``: mean squared error
    between ``vals`` and the real-valued ``batch.answers`` (same shape as ``vals``).
    """
    if answer_function == "avg_diff":
        return -batch_answer_diffs(vals, batch).mean()
    if answer_function == "avg_val":
        return -batch_answer_vals(vals, batch).mean()
    if answer_function == "mse":
        answers = batch.answers
        if not isinstance(answers, torch.Tensor):
            raise ValueError("answer_function='mse' needs one answer tensor of the output's shape")
        if answers.shape != vals.shape:
            raise ValueError(
                f"answer_function='mse' compares the output {tuple(vals.shape)} with real-valued "
                f"answers of the same shape; the batch's answers are {tuple(answers.shape)}"
            )
        return F.mse_loss(vals, answers.to(vals))
    raise ValueError(f"answer_function must be 'avg_diff', 'avg_val' or 'mse', got {answer_function!r}")
