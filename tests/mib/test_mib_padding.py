"""Right padding, MIB's way of batching prompts of different lengths: a right-padded
batch gives every prompt the scores and outputs it gets alone, unpadded. Each scorer's
sum over a mixed-length batch (whose loss is the batch mean) equals the sum over the
prompts run one at a time divided by the batch size; every circuit output and MIB's
per-prompt logit differences equal those of the prompt alone. Algorithms that read one
position for every prompt refuse such batches by name."""

from __future__ import annotations

import pytest
import torch

from edgewise import patchable_model
from edgewise.data import PromptDataLoader, PromptDataset, right_pad, select_output
from edgewise.evaluation.circuits import run_circuits
from edgewise.evaluation.node_circuits import run_node_circuits
from edgewise.mib.evaluate import prompt_logit_diffs
from edgewise.models import random_bridge, random_model
from edgewise.prune_algos import (
    acdc_prune_scores,
    clean_corrupted_prune_scores,
    eap_ig_activations_prune_scores,
    eap_ig_inputs_prune_scores,
    mask_gradient_prune_scores,
    optimal_ablation_values,
)
from edgewise.prune_algos.node_attribution import node_attribution_scores

from util import VOCAB, hooked_case

LENGTHS = [5, 7, 4, 6]
PAD = 1

MODELS = {
    "hooked": lambda: random_model(n_layers=2, d_vocab=VOCAB, dtype=torch.float64, seed=3),
    "bridge-gpt2": lambda: random_bridge("gpt2", d_vocab=VOCAB, dtype=torch.float64),
    "bridge-llama": lambda: random_bridge("llama", d_vocab=VOCAB, dtype=torch.float64),
}


_PMS: dict = {}


def _pm(kind: str):
    if kind not in _PMS:
        _PMS[kind] = patchable_model(MODELS[kind](), slice_output="last_seq", seq_len=None)
    return _PMS[kind]


def _kinds(*kinds: str):
    return [pytest.param(k, marks=hooked_case) if k == "hooked" else k for k in kinds]


@pytest.fixture(params=[*_kinds("hooked", "bridge-gpt2"),
                        pytest.param("bridge-llama", marks=pytest.mark.slow)])
def pm(request):
    return _pm(request.param)


def _dataset(**kwargs) -> PromptDataset:
    """Pairs of different lengths (each clean and corrupt of one length), the corrupt
    prompt differing in its last two tokens; random answers."""
    gen = torch.Generator().manual_seed(7)
    clean = [torch.randint(3, VOCAB, (n,), generator=gen) for n in LENGTHS]
    corrupt = []
    for c in clean:
        x = c.clone()
        x[-2:] = torch.randint(3, VOCAB, (2,), generator=gen)
        corrupt.append(x)
    answers = [torch.randint(0, VOCAB, (1,), generator=gen) for _ in LENGTHS]
    wrong = [torch.randint(0, VOCAB, (1,), generator=gen) for _ in LENGTHS]
    return PromptDataset(clean, corrupt, answers, wrong, **kwargs)


def _padded() -> PromptDataLoader:
    ds = _dataset(pad_id=PAD, padding_side="right")
    return PromptDataLoader(ds, batch_size=len(LENGTHS))


def _alone() -> PromptDataLoader:
    return PromptDataLoader(_dataset(), batch_size=1)


def _assert_close(got: dict, want: dict, rel: float = 1e-9) -> None:
    scale = max(float(v.abs().max()) for v in want.values())
    assert scale > 0
    for name in want:
        torch.testing.assert_close(got[name].double(), want[name].double(),
                                   atol=rel * scale + 1e-12, rtol=0)  # fmt: skip


def test_batches_record_lengths_and_read_each_last_token():
    batch = next(iter(_padded()))
    assert batch.lengths.tolist() == LENGTHS and batch.clean.shape == (4, 7)
    for i, n in enumerate(LENGTHS):
        assert batch.clean[i, n:].tolist() == [PAD] * (7 - n)
        assert batch.corrupt[i, n:].tolist() == [PAD] * (7 - n)
    logits = torch.arange(4 * 7 * 3.0).view(4, 7, 3)
    got = select_output(logits, (slice(None), -1), batch.lengths)
    assert torch.equal(got, torch.stack([logits[i, n - 1] for i, n in enumerate(LENGTHS)]))
    assert torch.equal(select_output(logits, (slice(None), -1)), logits[:, -1])
    with pytest.raises(ValueError, match="slice_output='last_seq'"):
        select_output(logits, (slice(None), slice(1, None)), batch.lengths)
    assert right_pad([torch.tensor([5, 6]), torch.tensor([7])], 0).tolist() == [[5, 6], [7, 0]]


SCORERS = {
    "eap": lambda pm, dl: mask_gradient_prune_scores(
        pm, dl, None, "logit", "avg_diff", mask_val=0.0, progress=False),
    "ig": lambda pm, dl: mask_gradient_prune_scores(
        pm, dl, None, "logprob", "avg_diff", integrated_grad_samples=2, progress=False),
    "eap-zero": lambda pm, dl: mask_gradient_prune_scores(
        pm, dl, None, "logit", "avg_diff", mask_val=0.0, ablation_type="zero", progress=False),
    "eap-ig-inputs": lambda pm, dl: eap_ig_inputs_prune_scores(
        pm, dl, integrated_grad_samples=2, endpoint="corrupt", progress=False),
    "eap-ig-activations": lambda pm, dl: eap_ig_activations_prune_scores(
        pm, dl, integrated_grad_samples=2, progress=False,
        sources=[next(iter(pm.src_modules)), "blocks.1.hook_mlp_out"]),
    "clean-corrupted": lambda pm, dl: clean_corrupted_prune_scores(pm, dl, progress=False),
    "node-eap": lambda pm, dl: node_attribution_scores(
        pm, dl, "eap", "neuron", mlp_gradient="input", progress=False),
    "node-eap-ig-inputs": lambda pm, dl: node_attribution_scores(
        pm, dl, "eap-ig-inputs", "node", integrated_grad_samples=2, progress=False),
}  # fmt: skip


BRIDGE_DEFAULT = ("eap", "eap-ig-inputs", "eap-ig-activations", "node-eap")


@pytest.mark.parametrize(
    ("kind", "scorer"),
    [pytest.param("hooked", s, marks=hooked_case) for s in SCORERS]
    # the same on a bridge, the slower passes (covered on the HookedTransformer) marked slow
    + [("bridge-gpt2", s) if s in BRIDGE_DEFAULT else pytest.param("bridge-gpt2", s, marks=pytest.mark.slow)
       for s in SCORERS]
    + [("bridge-llama", "eap"), pytest.param("bridge-llama", "eap-ig-inputs", marks=pytest.mark.slow)],
)
def test_padded_batch_scores_equal_each_prompt_alone(kind, scorer):
    pm = _pm(kind)
    padded = SCORERS[scorer](pm, _padded())
    alone = SCORERS[scorer](pm, _alone())  # a sum of per-prompt scores
    _assert_close({k: v * len(LENGTHS) for k, v in padded.items()}, alone)


def test_padded_batch_outputs_and_mib_values_equal_each_prompt_alone(pm):
    scores = SCORERS["eap"](pm, _alone())
    sizes = [0, 40, pm.n_edges]
    padded, alone = _padded(), _alone()
    got = run_circuits(pm, padded, sizes, scores, progress=False)
    want = run_circuits(pm, alone, sizes, scores, progress=False)
    (key,) = [b.key for b in padded]
    for size in want:
        rows = torch.cat([want[size][b.key] for b in alone])
        torch.testing.assert_close(got[size][key], rows, atol=1e-10, rtol=0)
    for size, diffs in prompt_logit_diffs(pm, padded, got).items():
        torch.testing.assert_close(diffs, prompt_logit_diffs(pm, alone, want)[size],
                                   atol=1e-10, rtol=0)  # fmt: skip
    nodes = SCORERS["node-eap"](pm, alone)
    got = run_node_circuits(pm, padded, [0, 1.0], nodes, progress=False)
    want = run_node_circuits(pm, alone, [0, 1.0], nodes, progress=False)
    for size in want:
        rows = torch.cat([want[size][b.key] for b in alone])
        torch.testing.assert_close(got[size][key], rows, atol=1e-10, rtol=0)


def test_optimal_ablation_ignores_padding(pm):
    """The starting mean and the next-token loss count each prompt's own tokens only:
    with no step, the value is the mean over the real positions of every prompt."""
    got = optimal_ablation_values(pm, _padded(), steps=0)
    outs = [pm.src_outs(b.clean) for b in _alone()]  # [n_srcs, 1, n, d] each
    want = torch.cat(outs, dim=2).mean((1, 2))
    torch.testing.assert_close(got[:, 0, 0].double(), want.double(), atol=1e-10, rtol=0)


def test_other_algorithms_and_mean_ablations_refuse_padded_batches(pm):
    with pytest.raises(ValueError, match="acdc_prune_scores: 1 of 1 batches are right-padded.*"
                                         "split_by_length"):
        acdc_prune_scores(pm, _padded(), None, tao_exps=[-2], tao_bases=[1])
    with pytest.raises(ValueError, match="batch_tokenwise_mean averages .* padding in"):
        mask_gradient_prune_scores(pm, _padded(), None, "logit", "avg_diff", mask_val=0.0,
                                   ablation_type="batch_tokenwise_mean", progress=False)
    per_position = patchable_model(pm.wrapped_model, slice_output="not_first_seq", seq_len=None)
    with pytest.raises(ValueError, match="slice_output='last_seq'"):
        run_circuits(per_position, _padded(), [1], per_position.new_prune_scores(1.0),
                     progress=False)
