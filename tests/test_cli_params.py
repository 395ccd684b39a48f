"""``--param ALGO.NAME=VALUE`` and the command line's defaults, without a model: values
are read by the scoring function's annotations, bad names and values are refused with
the valid choices, and no algorithm gets a value that differs from its Python
function's documented default unless the user or the task asked for it."""

from __future__ import annotations

import inspect

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgewise.benchmarks.tasks import TASKS, dataset_task
from edgewise.cli_params import (
    NOT_PARAMETERS,
    OWN_OPTION,
    TASK_SETTINGS,
    call_parameters,
    effective_parameters,
    function_parameters,
    jsonable,
    parse_params,
    settable,
)
from edgewise.prune_algos import ALGORITHMS

# what makes a registry entry the method it names, where it shares its function with
# another (the same mask-gradient function is EAP, IG, IG per layer and frozen EAP)
VARIANTS = {
    ("eap", "mask_val"): "EAP: gradients at mask 0",
    ("eap-frozen", "mask_val"): "EAP: gradients at mask 0",
    ("eap-frozen", "grad_rules"): "its LN and AH rules",
    ("ig", "integrated_grad_samples"): "IG: 10 points from clean to ablated",
    ("ig-layer", "integrated_grad_samples"): "IG: 10 points from clean to ablated",
    ("ig-layer", "integrated_grad_mode"): "one layer at a time",
    ("sp-tree", "tree"): "tree mode",
}


@given(st.integers(-10**6, 10**6))
def test_integers_read_back_as_given(n):
    assert parse_params([f"ig.steps={n}"], ["ig"]) == {"ig": {"integrated_grad_samples": n}}
    assert parse_params([f"ig.integrated_grad_samples={n}"], ["ig"])["ig"] == {
        "integrated_grad_samples": n}


@given(st.lists(st.integers(-9, 9), min_size=1, max_size=6))
def test_lists_are_comma_separated(values):
    text = ",".join(map(str, values))
    got = parse_params([f"acdc.tau_exps={text}", f"acdc.tau_bases={text}"], ["acdc"])
    assert got == {"acdc": {"tao_exps": values, "tao_bases": values}}


@pytest.mark.parametrize(("text", "value"), [("true", True), ("True", True), ("1", True),
                                             ("yes", True), ("false", False), ("0", False),
                                             ("off", False)])  # fmt: skip
def test_booleans(text, value):
    got = parse_params([f"atp-star.grad_drop={text}"], ["atp-star", "eap"])
    assert got == {"atp-star": {"grad_drop": value}, "eap": {}}


def test_none_choices_and_floats():
    got = parse_params(["sp.circuit_size=none", "sp.mask_fn=sigmoid", "sp.lr=0.25",
                        "eap.grad_rules=attention_pattern,norm_scale"], ["sp", "eap"])  # fmt: skip
    assert got == {"sp": {"circuit_size": None, "mask_fn": "sigmoid", "learning_rate": 0.25},
                   "eap": {"grad_rules": ["attention_pattern", "norm_scale"]}}
    # circuit-probing forwards its other parameters to the learned-mask function
    assert parse_params(["circuit-probing.epochs=3", "circuit-probing.sizes=5,7"],
                        ["circuit-probing"]) == {"circuit-probing": {"epochs": 3, "sizes": [5, 7]}}


@pytest.mark.parametrize(("texts", "algos", "message"), [
    (["ig.stepz=2"], ["ig"], "--param ig.stepz=2: ig has no parameter 'stepz' (did you mean "
                             "'steps'?); its parameters: mask_val, integrated_grad_samples, "
                             "clean_corrupt, integrated_grad_mode, grad_rules"),
    (["ig.steps=x"], ["ig"], "--param ig.steps=x: ig.integrated_grad_samples must be an "
                             "integer or none"),
    (["acdc.tau_exps=-5,a"], ["acdc"], "--param acdc.tau_exps=-5,a: acdc.tao_exps must be a "
                                       "comma-separated list, each an integer"),
    (["atp-star.grad_drop=maybe"], ["atp-star"], "--param atp-star.grad_drop=maybe: "
                                                 "atp-star.grad_drop must be true or false"),
    (["sp.mask_fn=relu"], ["sp"], "--param sp.mask_fn=relu: sp.mask_fn must be one of "
                                  "hard_concrete, sigmoid"),
    (["ig.steps=2"], ["eap", "acdc"], "--param ig.steps=2: 'ig' is not among --algo eap acdc; "
                                      "add it to --algo or drop the --param"),
    (["acd.tau_exps=-3"], ["acdc"], "--param acd.tau_exps=-3: 'acd' is not among --algo acdc "
                                    "(did you mean 'acdc'?); add it to --algo or drop the "
                                    "--param"),
    (["eap.grad_function=prob"], ["eap"], "--param eap.grad_function=prob: grad_function has "
                                          "its own option: use --grad-function"),
    (["eap.ablation_type=zero"], ["eap"], "--param eap.ablation_type=zero: ablation_type has "
                                          "its own option: use --ablation"),
    (["igsteps=2"], ["ig"], "--param 'igsteps=2': write ALGO.NAME=VALUE, e.g. --param "
                            "ig.steps=10 or --param acdc.tau_exps=-5,-3"),
    (["ig.steps=2", "ig.steps=3"], ["ig"], "--param ig.integrated_grad_samples is given twice, "
                                           "with different values: keep one"),
    (["random.steps=2"], ["random"], "--param random.steps=2: random has no parameter 'steps'; "
                                     "its parameters: seed"),
    (["norm.x=1"], ["norm"], "--param norm.x=1: norm has no parameter 'x'; its parameters: none"),
])  # fmt: skip
def test_refusals_name_the_option_and_the_choices(texts, algos, message):
    with pytest.raises(ValueError) as e:
        parse_params(texts, algos)
    assert str(e.value) == message


def test_every_signature_parameter_is_settable_or_accounted_for():
    """Whatever a function takes, ``--param`` can set it, or it has its own option, or it
    is how a run computes (progress, checkpoints, memory), or no string expresses it (a
    callable, a set of edges, a tensor)."""
    unexpressible = {"run_circuits_ref", "draw_seq_graph_ref", "edges", "avoid_edges",
                     "validation_dataloader", "ablation_values"}  # fmt: skip
    for algo, a in ALGORITHMS.items():
        names = list(inspect.signature(a.function).parameters)[3:]
        ok = set(settable(algo)) | set(OWN_OPTION) | set(NOT_PARAMETERS) | unexpressible
        left = [n for n in names if n not in ok and n != "kwargs"]
        assert not left, (algo, left)


@pytest.mark.parametrize("task", [*TASKS.values(), dataset_task("toy_copy")], ids=lambda t: t.name)
@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_the_command_line_passes_the_functions_defaults(algo, task):
    """What ``discover`` calls an algorithm with, when the user chose nothing: the
    function's documented defaults, except the task's settings (its loss, its
    faithfulness target) and what makes a registry entry the method it names."""
    a = ALGORITHMS[algo]
    passed = {**a.defaults, **call_parameters(algo, task, quiet=True)}
    own = function_parameters(a.function)
    for name, value in passed.items():
        if name in NOT_PARAMETERS:
            continue
        if name in TASK_SETTINGS:
            want = {"grad_function": task.grad_function, "answer_function": task.answer_function,
                    "faithfulness_target": "mse" if task.metric == "mse" else "kl_div"}[name]
            assert value == want, (algo, name)
            continue
        if (algo, name) in VARIANTS:
            continue
        default = own[name].default
        assert default is not inspect.Parameter.empty, (algo, name)
        assert jsonable(value) == jsonable(default), (algo, name, value, default)


def test_atp_star_has_graddrop_off_unless_asked():
    task = TASKS["toy_ioi"]
    call = call_parameters("atp-star", task, quiet=True)
    assert effective_parameters("atp-star", call)["grad_drop"] is False
    call = call_parameters("atp-star", task, quiet=True, params={"grad_drop": True})
    assert effective_parameters("atp-star", call)["grad_drop"] is True


def test_effective_parameters_hold_every_default():
    task = TASKS["toy_ioi"]
    call = call_parameters("eap", task, quiet=True, ablation="zero", grad_function="prob")
    got = effective_parameters("eap", call)
    assert got == {"grad_function": "prob", "answer_function": "avg_diff", "mask_val": 0.0,
                   "integrated_grad_samples": None, "ablation_type": "zero",
                   "clean_corrupt": "corrupt", "integrated_grad_mode": "all", "grad_rules": [],
                   "scale": "sum"}  # fmt: skip
