"""Loaders that can be read only once, and models left in training mode: every public
function that runs a model over a dataloader gives the result of a re-iterable loader
for a one-pass iterator of the same batches (never a half-read one), and runs the model
with dropout off, giving its training flags back."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import warnings

import pytest
import torch

import edgewise
from edgewise import (
    load_datasets_from_json,
    mask_gradient_prune_scores,
    patchable_model,
    run_circuits,
)
from edgewise.checks import _all_modules
from edgewise.data import require_batches
from edgewise.data.checks import OnePassBatches, reiterable
from edgewise.metrics.answers import measure_answer_diff, measure_kl_div
from edgewise.models import random_model
from edgewise.prune_algos import ALGORITHMS
from edgewise.runtime.ablation import src_ablations
from edgewise.types import AblationType

VOCAB, N_CTX = 20, 8
QUICK = {  # the registry's algorithms, made quick (as in test_bad_inputs)
    "eap": {}, "ig": {"integrated_grad_samples": 2}, "ig-layer": {"integrated_grad_samples": 2},
    "eap-ig-inputs": {"integrated_grad_samples": 2}, "atp-star": {"grad_drop": False},
    "exact": {}, "acdc": {"tao_exps": [-2], "tao_bases": [1]},
    "sp": {"epochs": 1}, "magnitude": {}, "norm": {},
    "eap-ig-activations": {"integrated_grad_samples": 2}, "clean-corrupted": {}, "eap-frozen": {},
}  # fmt: skip


@pytest.fixture(scope="module")
def model():
    return patchable_model(random_model(n_layers=1, n_heads=2, d_head=4, d_vocab=VOCAB, n_ctx=N_CTX))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three batches of two pairs whose corrupt prompts all differ: losing any batch
    changes every sum over batches."""
    prompts = [{"clean": [3, 4, 5, 6], "corrupt": [3, 9 - i % 3, 5, 7 + i], "answers": [1 + i % 2],
                "wrong_answers": [2 + i % 3]} for i in range(6)]  # fmt: skip
    path = tmp_path_factory.mktemp("d") / "six.json"
    path.write_text(json.dumps({"prompts": prompts}))
    return load_datasets_from_json(None, path, train_test_size=(6, 0), batch_size=2, shuffle=False)[0]


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


SLOW = {"ig-layer", "eap-ig-activations"}  # the same decorator; the default suite checks it is there


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in QUICK])  # fmt: skip
def test_every_algorithm_reads_a_generator_whole(model, data, name):
    params = {"progress": False, **QUICK[name]}
    try:
        want = ALGORITHMS[name](model, list(data), None, **params)
    except NotImplementedError as e:  # eap-frozen on a TransformerBridge (TransformerLens 4)
        pytest.skip(str(e))
    assert _same(ALGORITHMS[name](model, (b for b in data), None, **params), want)


def test_a_generator_is_not_half_read_by_the_emptiness_check(model, data):
    """The sum over batches of a generator equals the list's, and differs from the sum
    without the first batch (what the old emptiness check produced)."""
    def eap(loader):
        return mask_gradient_prune_scores(model, loader, None, "logit", "avg_diff", mask_val=0.0,
                                          progress=False)  # fmt: skip

    batches = list(data)
    full, without_first = eap(batches), eap(batches[1:])
    got = eap(b for b in batches)
    assert _same(got, full) and not _same(got, without_first)


def test_run_circuits_metrics_and_mean_ablation_take_generators(model, data):
    scores = mask_gradient_prune_scores(model, data, None, "logit", "avg_diff", mask_val=0.0,
                                        progress=False)  # fmt: skip
    want = run_circuits(model, data, [0, 3, 10], scores, progress=False)
    got = run_circuits(model, (b for b in data), [0, 3, 10], scores, progress=False)
    assert _same(got, want)
    assert measure_answer_diff(model, (b for b in data), want) == measure_answer_diff(model, data, want)
    assert measure_kl_div(model, iter(data), want) == measure_kl_div(model, data, want)
    mean = AblationType.TOKENWISE_MEAN_CORRUPT
    assert torch.equal(src_ablations(model, (b for b in data), mean), src_ablations(model, data, mean))


def _public_functions_with_a_loader():
    found = {}
    for info in pkgutil.walk_packages(edgewise.__path__, "edgewise."):
        module = importlib.import_module(info.name)
        for name, fn in vars(module).items():
            if (name.startswith("_") or not inspect.isfunction(fn)
                    or getattr(inspect.unwrap(fn), "__module__", None) != module.__name__):
                continue
            params = inspect.signature(fn).parameters
            if "model" in params and any(p in params for p in ("dataloader", "loader")):
                found[f"{module.__name__}.{name}"] = fn
    return found


def test_every_public_function_over_a_model_and_a_loader_is_a_scoring_entry():
    """The decorator is what reads one-pass iterators and switches dropout off; a
    function without it would half-read a generator (require_batches then refuses)."""
    found = _public_functions_with_a_loader()
    assert "edgewise.evaluation.circuits.run_circuits" in found and len(found) > 30
    internal = {"edgewise.data.checks.checked_batches", "edgewise.data.checks.require_full_prompts"}
    missing = [n for n, fn in found.items() if n not in internal and not getattr(fn, "__edgewise_entry__", False)]
    assert missing == []


def test_require_batches_refuses_a_one_pass_iterator_instead_of_consuming_it(data):
    gen = (b for b in data)
    with pytest.raises(TypeError, match=r"my_fn: the dataloader is a one-pass iterator \(generator\).*list\(\.\.\.\)"):
        require_batches(gen, "my_fn")
    assert len(list(gen)) == 3  # nothing was taken from it


def test_reiterable_keeps_loaders_and_reads_iterators_once(data):
    assert reiterable(data, "f") is data
    batches = list(data)
    assert reiterable(batches, "f") is batches
    read = reiterable(iter(batches), "f")
    assert isinstance(read, OnePassBatches) and list(read) == batches == list(read)
    assert (read.seq_len, read.diverge_idx, read.kv_cache) == (None, 0, None)
    assert "one-pass iterator (list_iterator) given to f" in read.name
    with pytest.raises(TypeError, match=r"f: the dataloader must be a PromptDataLoader or another "
                                        r"iterable of PromptPairBatch, got int"):
        reiterable(3, "f")


# ------------------------------------------------------------------ training mode
@pytest.fixture(scope="module")
def dropout_model():
    """A bridge over a random GPT-2 (dropout 0.1 everywhere), in training mode; on
    TransformerLens 3.9 also a bridge, since HookedTransformer has no dropout."""
    raw = random_model(n_layers=1, n_heads=2, d_head=4, d_vocab=VOCAB, n_ctx=N_CTX, kind="bridge", seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = patchable_model(raw)
    return raw, pm


def test_training_mode_scores_are_the_eval_mode_scores_and_the_mode_is_restored(dropout_model, data):
    raw, pm = dropout_model
    raw.train()
    flags = [m.training for m in _all_modules(raw)]
    assert all(flags) and any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in _all_modules(raw))
    t = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():  # the model itself really is random in training mode
        assert not torch.equal(raw(t), raw(t))

    def eap():
        return mask_gradient_prune_scores(pm, data, None, "logit", "avg_diff", mask_val=0.0,
                                          progress=False)  # fmt: skip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first, second = eap(), eap()
    assert [m.training for m in _all_modules(raw)] == flags  # given back, module by module
    raw.eval()
    try:
        want = eap()
    finally:
        raw.train()
    assert _same(first, second) and _same(first, want)


def test_training_mode_warns_once_per_model_saying_what_is_done():
    raw = random_model(n_layers=1, n_heads=2, d_head=4, d_vocab=VOCAB, n_ctx=N_CTX, kind="bridge", seed=6)
    raw.train()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pm = patchable_model(raw)
        scores = pm.new_prune_scores(1.0)
        batch = torch.tensor([[3, 4, 5, 6], [3, 4, 5, 7]])
        from edgewise.data import PromptDataLoader, PromptDataset

        loader = PromptDataLoader(PromptDataset(batch, batch.flip(1), [[1], [1]], [[2], [2]]), batch_size=2)
        run_circuits(pm, loader, [1], scores, progress=False)
    messages = [str(w.message) for w in record if issubclass(w.category, UserWarning)]
    mode = [m for m in messages if "training mode" in m]
    assert len(mode) == 1, messages
    assert "patchable_model: TransformerBridge is in training mode with dropout on" in mode[0]
    assert "eval mode (dropout off)" in mode[0] and "restores training mode" in mode[0]
    assert "model.eval()" in mode[0]
    # the check of the fast hooks ran without dropout: no false "does not reproduce" warning
    assert not [m for m in messages if "does not reproduce" in m]
    assert all(m.training for m in _all_modules(raw))


def test_an_eval_mode_model_gets_no_warning(model, data):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask_gradient_prune_scores(model, data, None, "logit", "avg_diff", mask_val=0.0, progress=False)
