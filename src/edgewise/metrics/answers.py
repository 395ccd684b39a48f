"""Metrics of model outputs on prompt batches: answer differences, answer values,
correct-answer rates, KL divergence to the full model, and their curves over circuit
size."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from edgewise.data import (
    PromptDataLoader,
    PromptPairBatch,
    check_answer_ids,
    loader_batches,
)
from edgewise.data.batches import model_output
from edgewise.data.checks import scoring_entry
from edgewise.patching.model import PatchableModel
from edgewise.types import CircuitOutputs, Measurements

ProbFunc = Literal["logits", "softmax", "log_softmax", "probs", "logprobs"]
"""``"logits"``; ``"softmax"`` (or ``"probs"``); ``"log_softmax"`` (or ``"logprobs"``).
auto-circuit's names are ``"logits"``, ``"softmax"`` and ``"log_softmax"``."""

def last_position(out: torch.Tensor) -> torch.Tensor:
    """``[batch, vocab]`` from an output ``[batch, vocab]`` or ``[batch, seq, vocab]``."""
    return out if out.ndim == 2 else out[:, -1]


def apply_prob_func(logits: torch.Tensor, prob_func: ProbFunc) -> torch.Tensor:
    if prob_func in ("logits", "logit"):
        return logits
    if prob_func in ("softmax", "probs", "prob"):
        return torch.softmax(logits, dim=-1)
    if prob_func in ("log_softmax", "logprobs", "logprob"):
        return torch.log_softmax(logits, dim=-1)
    raise ValueError(
        f"prob_func must be 'logits', 'softmax' or 'log_softmax' ('probs'/'logprobs' also work), "
        f"got {prob_func!r}"
    )


def _mean_gather(vals: torch.Tensor, idx: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """Mean of ``vals[i, ..., idx[i]]`` per prompt (and position).

    ``vals`` is ``[batch, vocab]`` or ``[batch, seq, vocab]``; ``idx`` is ``[batch, n]``
    (the same answers at every position), ``[batch, seq, n]`` (answers per position) or
    a list of 1-D tensors. Returns ``[batch]`` or ``[batch, seq]``.

    Raises ``TypeError`` for real-valued answers and ``ValueError`` for a prompt without
    answers (whose mean would be NaN): checks of dtype and shape only, no sync."""
    check_answer_ids([idx], None, "answer ids", "answer metric")
    if isinstance(idx, torch.Tensor):
        idx = idx.to(vals.device)
        if idx.ndim == vals.ndim - 1:
            idx = idx.unsqueeze(1).expand(*vals.shape[:-1], idx.shape[-1])
        return vals.gather(-1, idx).mean(dim=-1)
    return torch.stack([vals[i][..., a.to(vals.device)].mean(dim=-1) for i, a in enumerate(idx)])


def batch_answer_diffs(vals: torch.Tensor, batch: PromptPairBatch) -> torch.Tensor:
    """Per prompt (and position): mean over its answers minus mean over its wrong
    answers. ``vals`` ``[batch, (seq,) vocab]``; returns ``[batch(, seq)]``."""
    return _mean_gather(vals, batch.answers) - _mean_gather(vals, batch.wrong_answers)


def batch_answer_vals(vals: torch.Tensor, batch: PromptPairBatch) -> torch.Tensor:
    """Per prompt (and position): mean over its answers. Returns ``[batch(, seq)]``."""
    return _mean_gather(vals, batch.answers)


def _per_size(
    dataloader: PromptDataLoader,
    circuit_outs: CircuitOutputs,
    fn,
    batch_means: bool = False,
    answer_ids: bool = False,
) -> Measurements:
    """``fn(output, batch)`` per prompt, averaged per circuit size: over all prompts, or
    with ``batch_means`` as the mean of the batches' means (auto-circuit's weighting: a
    smaller last batch counts as much as a full one). ``answer_ids``: ``fn`` reads the
    answers' token ids, which are first checked against the outputs' vocabulary."""
    batches = loader_batches(dataloader, "measuring circuit outputs")
    if answer_ids:
        _check_ids_fit_outputs(batches, circuit_outs)
    out: Measurements = []
    for size, by_batch in sorted(circuit_outs.items()):
        missing = [b.key for b in batches if b.key not in by_batch]
        if missing:
            raise ValueError(
                f"circuit_outs of size {size} have no output for {len(missing)} of the "
                f"{len(batches)} batches of the dataloader (e.g. batch {missing[0]}): were they "
                "computed by run_circuits on this dataloader?"
            )
        vals = [fn(by_batch[b.key], b).flatten().double() for b in batches]
        if batch_means:
            out.append((size, torch.stack([v.mean() for v in vals]).mean().item()))
        else:
            out.append((size, torch.cat(vals).mean().item()))
    return out


def _check_ids_fit_outputs(batches: list[PromptPairBatch], circuit_outs: CircuitOutputs) -> None:
    """Integer answers and wrong answers within the vocabulary of the outputs (checked
    before indexing, which on a GPU would fail with an unrecoverable device assert)."""
    outs = next((o for per in circuit_outs.values() for o in per.values()), None)
    if outs is None:
        return
    for field in ("answers", "wrong_answers"):
        ids = [getattr(b, field) for b in batches]
        ints = [a for a in ids if not any(r.is_floating_point() or r.numel() == 0 for r in a)]
        if ints:
            check_answer_ids(ints, int(outs.shape[-1]), field, "answer metric")


@scoring_entry
def measure_answer_diff(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    circuit_outs: CircuitOutputs,
    prob_func: ProbFunc = "logits",
) -> Measurements:
    """Mean answer difference (answers minus wrong answers) per circuit size: the mean
    of the batches' means, as in auto-circuit."""
    return _per_size(
        dataloader,
        circuit_outs,
        lambda out, b: batch_answer_diffs(apply_prob_func(out, prob_func), b),
        batch_means=True,
        answer_ids=True,
    )


@scoring_entry
def measure_answer_val(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    circuit_outs: CircuitOutputs,
    prob_func: ProbFunc = "logits",
    wrong_answer: bool = False,
) -> Measurements:
    """Mean value of the answers (of the wrong answers with ``wrong_answer``) per circuit
    size: the mean of the batches' means, as in auto-circuit."""

    def vals(out: torch.Tensor, b: PromptPairBatch) -> torch.Tensor:
        return _mean_gather(apply_prob_func(out, prob_func), b.wrong_answers if wrong_answer else b.answers)

    return _per_size(dataloader, circuit_outs, vals, batch_means=True, answer_ids=True)


def _rows(out: torch.Tensor, idx: torch.Tensor | list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(values ``[vocab]``, ids) per prompt, or per prompt and position when the answers
    are given per position (``[batch, seq, n]`` for an output ``[batch, seq, vocab]``)."""
    if isinstance(idx, torch.Tensor) and idx.ndim == out.ndim == 3:
        return [(out[i, p], idx[i, p]) for i in range(out.shape[0]) for p in range(out.shape[1])]
    out = last_position(out)
    return [(out[i], idx[i]) for i in range(out.shape[0])]


def correct_answers(logits: torch.Tensor, batch: PromptPairBatch) -> torch.Tensor:
    """1 per prompt (and position, for per-position answers) where every answer beats
    every wrong answer that is not itself an answer; with no such wrong answer, where
    the top token is an answer. Returns a flat float tensor."""
    results = []
    for (vals, ans), (_, wrong) in zip(_rows(logits, batch.answers), _rows(logits, batch.wrong_answers)):
        ans, wrong = ans.to(vals.device), wrong.to(vals.device)
        wrong = wrong[~torch.isin(wrong, ans)]
        if wrong.numel():
            results.append(float(vals[ans].min() > vals[wrong].max()))
        else:
            results.append(float(bool(torch.isin(vals.argmax(), ans))))
    return torch.tensor(results)


@scoring_entry
def measure_all_answers_win_percent(
    model: PatchableModel, dataloader: PromptDataLoader, circuit_outs: CircuitOutputs
) -> Measurements:
    """Percentage of prompts whose answers all beat every wrong answer (see
    :func:`correct_answers`), per size. Any number of answers per prompt."""
    return [(s, 100 * v) for s, v in _per_size(dataloader, circuit_outs, correct_answers,
                                                            answer_ids=True)]


def top_answer_correct(
    logits: torch.Tensor, batch: PromptPairBatch, out_of_correct_and_incorrect_answers: bool = False
) -> torch.Tensor:
    """auto-circuit's correctness, 1 or 0 per prompt ``[batch]``: the top token of the
    whole vocabulary is the prompt's one answer; or, with
    ``out_of_correct_and_incorrect_answers``, the answer's value is at least every wrong
    answer's (a tie counts as correct)."""
    out = last_position(logits)
    answers = batch.answers
    rows = answers if isinstance(answers, list) else list(answers)
    if any(a.numel() != 1 for a in rows):
        raise ValueError(
            "measure_correct_ans_percent needs exactly one answer per prompt (as in auto-circuit); "
            "use measure_all_answers_win_percent for several answers"
        )
    answer = torch.stack([a.reshape(()) for a in rows]).to(out.device)
    if not out_of_correct_and_incorrect_answers:
        return (out.argmax(dim=-1) == answer).double()
    right = out.gather(-1, answer[:, None])[:, 0]
    wrong = [out[i, w.to(out.device)].max() if w.numel() else right[i] - 1
             for i, w in enumerate(batch.wrong_answers)]
    return (right >= torch.stack(wrong)).double()


@scoring_entry
def measure_correct_ans_percent(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    circuit_outs: CircuitOutputs,
    out_of_correct_and_incorrect_answers: bool = False,
) -> Measurements:
    """auto-circuit's correct-answer percentage per circuit size: the percentage of
    prompts whose one answer is the top token of the vocabulary (or, with
    ``out_of_correct_and_incorrect_answers``, at least every wrong answer), averaged as
    the mean of the batches' percentages. See :func:`top_answer_correct`."""
    return [
        (s, 100 * v)
        for s, v in _per_size(
            dataloader, circuit_outs,
            lambda out, b: top_answer_correct(out, b, out_of_correct_and_incorrect_answers),
            batch_means=True, answer_ids=True,
        )
    ]


@scoring_entry
def measure_mse(
    model: PatchableModel, dataloader: PromptDataLoader, circuit_outs: CircuitOutputs
) -> Measurements:
    """Mean squared error between outputs and real-valued answers (same shape), per size."""
    return _per_size(
        dataloader, circuit_outs, lambda out, b: (out.double() - b.answers.to(out.device).double()) ** 2
    )


@scoring_entry
def full_model_outputs(
    model: PatchableModel, dataloader: PromptDataLoader, clean: bool = True
) -> dict[int, torch.Tensor]:
    """The unpatched model's output at ``model.out_slice`` (a right-padded batch: at each
    prompt's last token) per batch key."""
    with torch.inference_mode():
        return {
            b.key: model_output(model, b.clean if clean else b.corrupt, b)
            for b in dataloader
        }


def kl_div_full(full: torch.Tensor, circuit: torch.Tensor) -> torch.Tensor:
    """KL(full || circuit) of the softmax distributions, per prompt and position
    (``[batch]`` or ``[batch, seq]``)."""
    full_lp = torch.log_softmax(full.double(), dim=-1)
    circ_lp = torch.log_softmax(circuit.double(), dim=-1)
    return F.kl_div(circ_lp, full_lp, log_target=True, reduction="none").sum(dim=-1)


@scoring_entry
def measure_kl_div(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    circuit_outs: CircuitOutputs,
    compare_to_clean: bool = True,
    full_outs: dict[int, torch.Tensor] | None = None,
) -> Measurements:
    """KL(full model || circuit) per circuit size, mean over prompts and output positions.
    The full model runs the clean prompts, or the corrupt ones with ``compare_to_clean=False``
    (as in auto-circuit); ``full_outs`` gives its outputs per batch key instead."""
    if full_outs is None:
        full_outs = full_model_outputs(model, dataloader, clean=compare_to_clean)
    return _per_size(dataloader, circuit_outs, lambda out, b: kl_div_full(full_outs[b.key], out))


@scoring_entry
def measure_logit_diff_percent(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    circuit_outs: CircuitOutputs,
    full_outs: dict[int, torch.Tensor] | None = None,
) -> Measurements:
    """The circuit's mean logit difference as a percentage of the full model's."""
    full_outs = full_outs if full_outs is not None else full_model_outputs(model, dataloader)
    full = torch.cat([batch_answer_diffs(full_outs[b.key], b).flatten() for b in dataloader])
    full_mean = full.float().mean().item()
    if full_mean == 0:
        raise ValueError("the full model's logit difference is 0: the percentage is undefined")
    return [(s, 100 * v / full_mean) for s, v in _per_size(
        dataloader, circuit_outs, lambda out, b: batch_answer_diffs(out, b), answer_ids=True)]


@scoring_entry
def measure_answer_diff_percent(
    model: PatchableModel,
    dataloader: PromptDataLoader,
    circuit_outs: CircuitOutputs,
    prob_func: ProbFunc = "logits",
    diff_of_means: bool = True,
) -> Measurements:
    """auto-circuit's answer-difference percentage per circuit size, the full model's
    difference being 100: with ``diff_of_means``, 100 x (mean of the batches' mean
    differences of the circuit) / (the same of the full model); otherwise the mean over
    prompts of each prompt's percentage."""
    full_outs = full_model_outputs(model, dataloader)
    if diff_of_means:
        ((_, full_mean),) = measure_answer_diff(model, dataloader, {0: full_outs}, prob_func)
        return [(s, 100 * v / full_mean)
                for s, v in measure_answer_diff(model, dataloader, circuit_outs, prob_func)]

    def percent(out: torch.Tensor, b: PromptPairBatch) -> torch.Tensor:
        diff = batch_answer_diffs(apply_prob_func(out, prob_func), b).double()
        return 100 * diff / batch_answer_diffs(apply_prob_func(full_outs[b.key], prob_func), b).double()

    return _per_size(dataloader, circuit_outs, percent, answer_ids=True)
