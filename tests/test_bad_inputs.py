"""Bad inputs through the API: each gives a clear error of a fixed class that
names the input and the fix, or a warning, never a raw traceback or a silently wrong
result. The command-line cases live with the CLI's tests."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import Subset

from edgewise import (
    PromptDataLoader,
    circuit_edges,
    edge_counts_util,
    load_datasets_from_json,
    mask_gradient_prune_scores,
    patchable_model,
    run_circuits,
)
from edgewise.checks import require_device, require_int, require_real
from edgewise.data import PromptDataset
from edgewise.metrics.answers import measure_answer_diff
from edgewise.models import random_model
from edgewise.prune_algos import ALGORITHMS, acdc_prune_scores, eap_ig_inputs_prune_scores
from edgewise.runtime.ablation import src_ablations
from edgewise.types import AblationType, PatchType

VOCAB, N_CTX = 20, 8


@pytest.fixture(scope="module")
def model():
    """A one-layer random model (a HookedTransformer on TransformerLens 3.x, a bridge on 4.x)."""
    return patchable_model(random_model(n_layers=1, n_heads=2, d_head=4, d_vocab=VOCAB, n_ctx=N_CTX))


def pair(clean, corrupt, answers=(1,), wrong=(2,)):
    return {"clean": list(clean), "corrupt": list(corrupt), "answers": list(answers),
            "wrong_answers": list(wrong)}  # fmt: skip


GOOD = [pair([3, 4, 5, 6], [3, 4, 5, 7 + i]) for i in range(4)]


def write(tmp_path: Path, prompts, name: str = "data.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"prompts": prompts}))
    return path


def loader(tmp_path: Path, prompts, name: str = "data.json", **kwargs):
    """The train split of ``prompts`` (all of them unless told), loaded without a model."""
    kwargs = {"train_test_size": (len(prompts), 0), "batch_size": 2, "shuffle": False, **kwargs}
    return load_datasets_from_json(None, write(tmp_path, prompts, name), **kwargs)[0]


def eap(model, dataloader, **kwargs):
    kwargs = {"mask_val": 0.0, **kwargs} if "integrated_grad_samples" not in kwargs else kwargs
    return mask_gradient_prune_scores(model, dataloader, None, "logit", "avg_diff",
                                      progress=False, **kwargs)  # fmt: skip


# ------------------------------------------------------------------ silently wrong results
SCORERS = {  # the registry's algorithms, made quick
    "eap": {}, "ig": {"integrated_grad_samples": 2}, "ig-layer": {"integrated_grad_samples": 2},
    "eap-ig-inputs": {"integrated_grad_samples": 2}, "atp-star": {"grad_drop": False},
    "exact": {}, "acdc": {"tao_exps": [-2], "tao_bases": [1]},
    "sp": {"epochs": 1}, "magnitude": {}, "norm": {},
    "eap-ig-activations": {"integrated_grad_samples": 2}, "clean-corrupted": {}, "eap-frozen": {},
}


@pytest.mark.parametrize("name", list(SCORERS))
def test_empty_train_split_raises_naming_the_split(model, tmp_path, name):
    train, test = load_datasets_from_json(None, write(tmp_path, GOOD), train_test_size=(0, 4),
                                          batch_size=2)  # fmt: skip
    assert len(test) == 2
    with pytest.raises(ValueError, match=r"the train split of .*data\.json.*no batches"):
        ALGORITHMS[name](model, train, None, **{"progress": False, **SCORERS[name]})


@pytest.mark.parametrize("fn", ["subnetwork_probing_prune_scores", "circuit_probing_prune_scores"])
def test_auto_circuit_probing_refuses_an_empty_split(model, tmp_path, fn):
    import edgewise

    train, _ = load_datasets_from_json(None, write(tmp_path, GOOD), train_test_size=(0, 4),
                                       batch_size=2)  # fmt: skip
    kw = {"circuit_sizes": [2]} if fn.startswith("circuit") else {}
    with pytest.raises(ValueError, match=r"the train split of .*data\.json.*no batches"):
        getattr(edgewise, fn)(model, train, None, epochs=1, progress=False, **kw)


def test_run_circuits_and_metrics_on_an_empty_loader_raise(model):
    empty = PromptDataLoader(Subset(PromptDataset([[3, 4]], [[3, 5]], [[1]], [[2]]), []), batch_size=1)
    with pytest.raises(ValueError, match="run_circuits: the dataloader yields no batches"):
        run_circuits(model, empty, [1], model.new_prune_scores(1.0), progress=False)
    with pytest.raises(ValueError, match="no batches"):
        measure_answer_diff(model, empty, {1: {}})
    with pytest.raises(ValueError, match="TokenwiseMean|tokenwise_mean|yields no batches"):
        src_ablations(model, empty, AblationType.TOKENWISE_MEAN_CLEAN)


@pytest.mark.parametrize("name", ["eap", "eap-ig-inputs", "acdc", "exact"])
def test_clean_equal_to_corrupt_everywhere_warns(model, tmp_path, name):
    same = [pair([3, 4, 5, 6 + i], [3, 4, 5, 6 + i]) for i in range(4)]
    with pytest.warns(UserWarning, match="every clean prompt is identical to its corrupt prompt"):
        ALGORITHMS[name](model, loader(tmp_path, same), None, **{"progress": False, **SCORERS[name]})


def test_one_corrupted_pair_is_enough_not_to_warn(model, tmp_path):
    prompts = [pair([3, 4, 5, 6], [3, 4, 5, 6])] * 3 + [pair([3, 4, 5, 6], [3, 4, 5, 9])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eap(model, loader(tmp_path, prompts, batch_size=4))


def _nan_embedding_model():
    """A fresh model whose token embedding (the first [d_vocab, d_model] weight) is NaN."""
    raw = random_model(n_layers=1, n_heads=2, d_head=4, d_vocab=VOCAB, n_ctx=N_CTX, seed=3)
    weight = next(p for p in raw.parameters() if p.dim() == 2 and p.shape[0] == VOCAB)
    with torch.no_grad():
        weight.fill_(float("nan"))
    return patchable_model(raw)


def test_acdc_names_the_source_of_a_nan_as_eap_does(tmp_path):
    nan_model = _nan_embedding_model()
    data = loader(tmp_path, GOOD)
    with pytest.raises(FloatingPointError, match="Resid Start") as acdc_err:
        acdc_prune_scores(nan_model, data, None, tao_exps=[-2], tao_bases=[1], progress=False)
    with pytest.raises(FloatingPointError, match="Resid Start"):
        eap(nan_model, data)
    assert "acdc_prune_scores" in str(acdc_err.value) and "+inf" in str(acdc_err.value)


def test_circuit_edges_with_nan_scores_names_the_edges(model):
    scores = model.new_prune_scores(1.0)
    name = next(iter(scores))
    scores[name].view(-1)[0] = float("nan")
    first = next(e for e in model.edges if e.dest.module_name == name and e.patch_idx == (0,) * scores[name].dim())
    with pytest.raises(ValueError, match="NaN") as err:
        circuit_edges(model, scores, 3)
    assert repr(first) in str(err.value) and name in str(err.value)
    with pytest.raises(ValueError, match="NaN"):
        edge_counts_util(model.edges, prune_scores=scores)
    all_nan = {n: torch.full_like(s, float("nan")) for n, s in scores.items()}
    with pytest.raises(ValueError, match=f"NaN for {model.n_edges} edge"):
        circuit_edges(model, all_nan, 3)


def test_padding_warns_and_the_docstring_says_so(tmp_path):
    prompts = [pair([3, 4, 5, 6], [3, 4, 5, 7]), pair([3, 4, 5], [3, 4, 8])] * 2
    with pytest.warns(UserWarning, match="attends to the padding") as record:
        loader(tmp_path, prompts, pad_id=0)
    assert "2 prompt pair(s) of lengths [3, 4]" in str(record[0].message)
    with pytest.raises(ValueError, match="pad=False"):
        loader(tmp_path, prompts, pad_id=0, pad=False)
    # padding per batch (a ragged dataset, the loader given a pad id) warns too
    ragged = PromptDataset([[3, 4], [3, 4, 5]], [[3, 6], [3, 4, 6]], [[1], [1]], [[2], [2]])
    with pytest.warns(UserWarning, match="attends to the padding"):
        next(iter(PromptDataLoader(ragged, batch_size=2, pad_id=0)))
    doc = " ".join(load_datasets_from_json.__doc__.split())
    assert "with a warning" in doc and "no attention mask" in doc


# ------------------------------------------------------------------ clear errors, not tracebacks
def test_dataset_file_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('{"prompts": [{"clean": "caf\u00e9"}]}'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.json: not UTF-8 text.*save the dataset as UTF-8"):
        load_datasets_from_json(None, path)


@pytest.mark.parametrize("text", ['{"prompts": [', "", "[1, 2]", '{"prompts": 3}', '{"prompt": []}'])
def test_json_errors_name_the_file(tmp_path, text):
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"broken\.json"):
        load_datasets_from_json(None, path)


def test_prompts_longer_than_the_context(model, tmp_path):
    long = [pair(range(3, 13), [*range(3, 12), 19]) for _ in range(2)]
    path = write(tmp_path, long, "long.json")
    with pytest.raises(ValueError, match=r"long\.json: 2 prompt\(s\) have more tokens than the "
                                         r"model's context \(n_ctx=8\), the longest 10"):
        load_datasets_from_json(model, path, train_test_size=(2, 0), batch_size=1)
    unchecked = loader(tmp_path, long)  # without a model nothing knows n_ctx yet
    with pytest.raises(ValueError, match=r"10 tokens, more than the model's context \(n_ctx=8\)"):
        eap(model, unchecked)


def test_seq_len_model_given_longer_prompts(model, tmp_path):
    per_position = patchable_model(model.wrapped_model, seq_len=5)
    seven = [pair([3, 4, 5, 6, 7, 8, 9], [3, 4, 5, 6, 7, 8, 10 + i]) for i in range(2)]
    with pytest.raises(ValueError, match=r"seq_len=5 .*7 tokens.*patchable_model\(\.\.\., seq_len=7\)"):
        eap(per_position, loader(tmp_path, seven))
    with pytest.raises(ValueError, match="seq_len=9 is longer than the model's context"):
        patchable_model(model.wrapped_model, seq_len=9)


def test_out_of_vocabulary_ids_loaded_without_a_model_fail_when_scored(model, tmp_path):
    answers = [pair([3, 4, 5, 6], [3, 4, 5, 7], answers=[99]) for _ in range(2)]
    with pytest.raises(ValueError, match=r"answers hold token id 99.*ids 0\.\.19.*model=None"):
        eap(model, loader(tmp_path, answers))
    prompt = [pair([3, 4, 5, 60], [3, 4, 5, 7]) for _ in range(2)]
    with pytest.raises(ValueError, match=r"token id 60.*d_vocab=20.*model=None"):
        eap(model, loader(tmp_path, prompt, "prompt.json"))
    with pytest.raises(ValueError, match=r"answers\[0\].*99.*vocabulary"):  # with the model: at load
        load_datasets_from_json(model, write(tmp_path, answers), train_test_size=(2, 0), batch_size=1)


def test_out_of_vocabulary_answer_in_a_metric(model, tmp_path):
    data = loader(tmp_path, [pair([3, 4, 5, 6], [3, 4, 5, 7], answers=[25]) for _ in range(2)])
    outs = {0: {b.key: torch.zeros(2, VOCAB) for b in data}}
    with pytest.raises(ValueError, match="answer metric: answers hold token id 25"):
        measure_answer_diff(model, data, outs)


def test_float_answer_ids_with_avg_diff(model, tmp_path):
    floats = [pair([3, 4, 5, 6], [3, 4, 5, 7], answers=[1.0]) for _ in range(2)]
    with pytest.raises(TypeError, match=r"answer_function='avg_diff'.*real numbers.*\(1, not 1\.0\)"):
        eap(model, loader(tmp_path, floats))


def test_empty_answers_say_so_not_float16(model, tmp_path):
    with pytest.raises(ValueError, match="2 of 2 prompts have no answers") as err:
        eap(model, loader(tmp_path, [pair([3, 4, 5, 6], [3, 4, 5, 7], answers=[])] * 2))
    assert "float16" not in str(err.value)
    no_wrong = loader(tmp_path, [pair([3, 4, 5, 6], [3, 4, 5, 7], wrong=[])] * 2, "nowrong.json")
    with pytest.raises(ValueError, match="no wrong_answers.*answer_function='avg_val'"):
        eap(model, no_wrong)
    scores = mask_gradient_prune_scores(model, no_wrong, None, "logit", "avg_val", mask_val=0.0,
                                        progress=False)  # fmt: skip
    assert all(bool(torch.isfinite(s).all()) for s in scores.values())


@pytest.mark.parametrize("given_as", ["zero", "ZERO", " Zero "])
def test_ablation_type_as_a_string(model, tmp_path, given_as):
    data = loader(tmp_path, GOOD)
    want = eap(model, data, ablation_type=AblationType.ZERO)
    got = eap(model, data, ablation_type=given_as)
    assert all(torch.equal(want[n], got[n]) for n in want)


def test_ablation_and_patch_type_strings():
    assert AblationType("batch_all_tok_mean") is AblationType.BATCH_ALL_TOK_MEAN
    assert PatchType("tree") is PatchType.TREE_PATCH and PatchType("EDGE_PATCH") is PatchType.EDGE_PATCH
    with pytest.raises(ValueError, match=r"ablation_type='zeros' is not a AblationType; use one of 'resample', 'zero'"):
        AblationType("zeros")
    with pytest.raises(TypeError, match="ablation_type must be a AblationType or one of the strings"):
        AblationType(0)


def test_run_circuits_accepts_strings(model, tmp_path):
    data = loader(tmp_path, GOOD)
    scores = model.new_prune_scores(1.0)
    want = run_circuits(model, data, [0], scores, PatchType.TREE_PATCH, AblationType.ZERO, progress=False)
    got = run_circuits(model, data, [0], scores, "tree_patch", "zero", progress=False)
    assert all(torch.equal(want[0][k], got[0][k]) for k in want[0])


@pytest.mark.parametrize("bad", [2.5, "10", None, True, float("nan")])
def test_integrated_grad_samples_must_be_an_int(model, tmp_path, bad):
    data = loader(tmp_path, GOOD)
    if bad is None:  # neither mask_val nor integrated_grad_samples
        with pytest.raises(ValueError, match="pass exactly one of mask_val"):
            mask_gradient_prune_scores(model, data, None, "logit", "avg_diff", progress=False)
        return
    with pytest.raises(TypeError, match="integrated_grad_samples must be"):
        eap(model, data, integrated_grad_samples=bad)
    with pytest.raises(TypeError, match="integrated_grad_samples must be"):
        eap_ig_inputs_prune_scores(model, data, integrated_grad_samples=bad, progress=False)


def test_integrated_grad_samples_below_one(model, tmp_path):
    with pytest.raises(ValueError, match="integrated_grad_samples must be >= 1, got 0"):
        eap(model, loader(tmp_path, GOOD), integrated_grad_samples=0)


@pytest.mark.parametrize(("exps", "bases", "error", "match"), [
    ([400], [1], ValueError, r"1 \* 10\*\*400.*tao_exps"),
    ([-400], [1], ValueError, r"1 \* 10\*\*-400 .* is 0\.0"),
    ([-2], [0], ValueError, "positive tao_bases"),
    ([-2], [-1], ValueError, "positive tao_bases"),
    ([], [1], ValueError, "tao_exps is empty"),
    (-3, [1], TypeError, "tao_exps must be a list of numbers"),
    (["-3"], [1], TypeError, "tao_exps must be a number"),
    ([-2], [float("nan")], ValueError, "tao_bases must be a finite number"),
])  # fmt: skip
def test_acdc_thresholds(model, tmp_path, exps, bases, error, match):
    with pytest.raises(error, match=match):
        acdc_prune_scores(model, loader(tmp_path, GOOD), None, tao_exps=exps, tao_bases=bases,
                          progress=False)  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu(tmp_path):
    raw = random_model(n_layers=1, n_heads=2, d_head=4, d_vocab=VOCAB, n_ctx=N_CTX)
    with pytest.raises(ValueError, match=r"device='cuda' is not available on this machine.*device='cpu'"):
        patchable_model(raw, device="cuda")
    patchable_model(raw)  # the failed call moved nothing: the model still works on the CPU
    with pytest.raises(ValueError, match="device='cuda' is not available"):
        load_datasets_from_json(None, write(tmp_path, GOOD), device="cuda")


def test_device_names_that_are_not_devices():
    with pytest.raises(ValueError, match="device='gpu0' is not a device"):
        require_device("gpu0")
    assert require_device("cpu") == torch.device("cpu")


# ------------------------------------------------------------------ vague errors made precise
def test_missing_field_is_named_by_its_index_in_the_file(tmp_path):
    prompts = [dict(p) for p in GOOD + GOOD]
    del prompts[5]["answers"]
    for shuffle in (True, False):
        with pytest.raises(ValueError, match=r"data\.json: prompt 5: missing field\(s\) \['answers'\]"):
            load_datasets_from_json(None, write(tmp_path, prompts), train_test_size=(8, 0),
                                    batch_size=2, shuffle=shuffle)  # fmt: skip


def test_a_bad_prompt_is_named_by_file_and_index_after_shuffling(tmp_path):
    prompts = [dict(p) for p in GOOD + GOOD]
    prompts[6] = pair([3, 4, 5], [3, 4, 5, 6])  # clean and corrupt of different lengths
    second = write(tmp_path, prompts, "second.json")
    with pytest.raises(ValueError, match=r"second\.json: prompt 6: the clean prompt has 3 tokens "
                                         r"but the corrupt prompt has 4"):
        load_datasets_from_json(None, [write(tmp_path, GOOD), second], train_test_size=(1.0, 0.0),
                                batch_size=2)  # fmt: skip


def test_empty_prompts_list_says_the_file_has_none(tmp_path):
    with pytest.raises(ValueError, match=r"empty\.json: the file has no prompts") as err:
        load_datasets_from_json(None, write(tmp_path, [], "empty.json"))
    assert "train_test_size" not in str(err.value)


def test_split_errors_name_the_file_and_split(tmp_path):
    with pytest.raises(ValueError, match=r"data\.json: train_test_size=\(3, 3\) asks for 6 prompts"):
        load_datasets_from_json(None, write(tmp_path, GOOD), train_test_size=(3, 3))
    with pytest.raises(ValueError, match=r"the test split of .*data\.json.*1 prompt pairs, fewer than "
                                         r"batch_size=2"):
        load_datasets_from_json(None, write(tmp_path, GOOD), train_test_size=(3, 1), batch_size=2)


# ------------------------------------------------------------------ more of our own
@pytest.mark.parametrize(("batch_size", "error"), [(0, ValueError), (-1, ValueError), (2.5, TypeError),
                                                   ((2, 0), ValueError), ((1, 2, 3), ValueError)])
def test_batch_size(tmp_path, batch_size, error):
    with pytest.raises(error, match="batch_size"):
        load_datasets_from_json(None, write(tmp_path, GOOD), train_test_size=(2, 2),
                                batch_size=batch_size)  # fmt: skip


@pytest.mark.parametrize(("mask_val", "error"), [(float("nan"), ValueError), (float("inf"), ValueError),
                                                 ("0", TypeError)])
def test_mask_val_must_be_a_finite_number(model, tmp_path, mask_val, error):
    with pytest.raises(error, match="mask_val must be a"):
        eap(model, loader(tmp_path, GOOD), mask_val=mask_val)


def test_exclusive_parameters_both_given(model, tmp_path):
    with pytest.raises(ValueError, match="pass exactly one of mask_val.*got mask_val=0.0, "
                                         "integrated_grad_samples=3"):
        eap(model, loader(tmp_path, GOOD), mask_val=0.0, integrated_grad_samples=3)


def test_model_without_hooks():
    with pytest.raises(TypeError, match="Linear has no TransformerLens hook points"):
        patchable_model(torch.nn.Linear(2, 2))


def test_float_tokens_given_to_the_model(model):
    with pytest.raises(TypeError, match=r"integer token ids, got shape \(2, 4\) and dtype torch.float32"):
        model(torch.zeros(2, 4))


def test_prune_scores_for_another_model(model, tmp_path):
    scores = {n: torch.ones(3, 3) for n in model.dest_modules}
    with pytest.raises(ValueError, match="were the scores made for another model"):
        run_circuits(model, loader(tmp_path, GOOD), [1], scores, progress=False)


def test_text_prompts_without_a_tokenizer_name_the_file(tmp_path):
    path = tmp_path / "text.json"
    path.write_text(json.dumps({"prompts": [{"clean": "a b", "corrupt": "a c", "answers": [1],
                                             "wrong_answers": [2]}]}))  # fmt: skip
    with pytest.raises(ValueError, match=r"text\.json: the prompts are text but no tokenizer"):
        load_datasets_from_json(None, path, train_test_size=(1, 0), batch_size=1)


def test_circuit_outputs_from_another_loader(model, tmp_path):
    data = loader(tmp_path, GOOD)
    with pytest.raises(ValueError, match="have no output for 2 of the 2 batches"):
        measure_answer_diff(model, data, {1: {123: torch.zeros(2, VOCAB)}})


@pytest.mark.parametrize(("value", "error"), [(2.5, TypeError), ("3", TypeError), (True, TypeError),
                                              (0, ValueError), (math.inf, TypeError)])
def test_require_int_names_the_parameter(value, error):
    with pytest.raises(error, match="speculation must be"):
        require_int(value, "speculation", 1)
    assert require_int(10.0, "epochs") == 10


def test_require_real_names_the_parameter():
    with pytest.raises(ValueError, match="mask_val must be a finite number, got nan"):
        require_real(float("nan"), "mask_val")
    assert require_real(torch.tensor(0.5), "mask_val") == 0.5


# ------------------------------------------------------------------ generated bad datasets
_ids = st.lists(st.integers(min_value=-3, max_value=2**64), max_size=4)
_value = st.one_of(
    _ids, st.text(max_size=4), st.none(), st.booleans(), st.floats(allow_nan=True),
    st.integers(min_value=-5, max_value=2**65), st.lists(_ids, max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=3),
)
_field = st.one_of(_value, _ids.filter(bool))
_prompt = st.one_of(
    st.fixed_dictionaries({}, optional={f: _field for f in ("clean", "corrupt", "answers",
                                                             "wrong_answers")}),  # fmt: skip
    _value,
)
_dataset = st.one_of(
    st.fixed_dictionaries({"prompts": st.lists(_prompt, max_size=4)},
                          optional={"seq_labels": _value, "word_idxs": _value}),  # fmt: skip
    st.fixed_dictionaries({"prompts": _value}),
    _value,
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_dataset)
def test_malformed_dataset_json_always_gives_a_value_error_naming_the_file(tmp_path, data):
    path = tmp_path / "generated.json"
    path.write_text(json.dumps(data))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_datasets_from_json(None, path, train_test_size=(1.0, 0.0), batch_size=1,
                                    shuffle=False)  # fmt: skip
    except ValueError as err:
        assert "generated.json" in str(err), str(err)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=40))
def test_arbitrary_bytes_give_a_value_error_naming_the_file(tmp_path, raw):
    path = tmp_path / "bytes.json"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=r"bytes\.json"):
        load_datasets_from_json(None, path, train_test_size=(1.0, 0.0), batch_size=1)


def test_batches_with_clean_and_corrupt_of_different_lengths(model):
    from types import SimpleNamespace

    batch = SimpleNamespace(clean=torch.randint(3, VOCAB, (2, 5)), corrupt=torch.randint(3, VOCAB, (2, 6)))
    with pytest.raises(ValueError, match=r"clean prompts \(2, 5\) and corrupt prompts \(2, 6\).*"
                                         "token lengths must match"):
        eap(model, [batch])


@pytest.mark.parametrize("name", ["eap", "eap-ig-inputs", "atp-star", "exact"])
def test_unknown_loss_names_are_refused_before_any_work(model, tmp_path, name):
    data = loader(tmp_path, GOOD)
    with pytest.raises(ValueError, match="grad_function must be one of 'logit'.*got 'logits'"):
        ALGORITHMS[name](model, data, None, **{**SCORERS[name], "grad_function": "logits"})
    with pytest.raises(ValueError, match="answer_function must be one of 'avg_diff'.*got 'logit_diff'"):
        ALGORITHMS[name](model, data, None, **{**SCORERS[name], "answer_function": "logit_diff"})


def test_circuit_sizes_given_as_a_number(model, tmp_path):
    with pytest.raises(TypeError, match=r"test_edge_counts must be a list of circuit sizes.*\[5\]"):
        run_circuits(model, loader(tmp_path, GOOD), 5, model.new_prune_scores(1.0), progress=False)
    with pytest.raises(TypeError, match="size must be a whole number"):
        circuit_edges(model, model.new_prune_scores(1.0), 0.5)
