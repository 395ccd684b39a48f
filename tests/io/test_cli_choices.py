"""The scoring choices of ``edgewise discover`` (``--ablation``, ``--grad-function``,
``--answer-function``, ``--positions``, ``--param``): refused before anything loads
when an algorithm cannot take them, passed to the scoring functions (the saved scores
equal the direct call), recorded in ``results.json`` with every default, checked on
resume and shown in the report; and what an interrupted run finished stays readable."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest
import torch

import edgewise.benchmarks.tasks
from edgewise.cli import _setup, main
from edgewise.cli_params import call_parameters, effective_parameters
from edgewise.io import load_prune_scores
from edgewise.io.provenance import ProvenanceError
from edgewise.prune_algos import ALGORITHMS, mask_gradient_prune_scores

from folders import RUN, api, cli_error

pytestmark = pytest.mark.usefixtures("few_circuit_sizes")


@pytest.fixture
def no_loading(monkeypatch):
    """Loading a model fails the test: what is checked must be checked before."""
    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(edgewise.benchmarks.tasks, "load_model", fail)


@pytest.mark.parametrize(("extra", "message"), [
    (["--algo", "eap", "acdc", "eap-ig-inputs", "--ablation", "zero"],
     "--ablation zero: acdc, eap-ig-inputs always patch from the corrupt prompts; the "
     "algorithms that can: {able}"),
    (["--algo", "ig", "--param", "ig.stepz=2"],
     "--param ig.stepz=2: ig has no parameter 'stepz' (did you mean 'steps'?); its parameters: "
     "mask_val, integrated_grad_samples, clean_corrupt, integrated_grad_mode, grad_rules"),
    (["--algo", "acdc", "random", "--grad-function", "prob"],
     "--grad-function applies to {loss}; none of --algo acdc random takes it: drop "
     "--grad-function or add one of those"),
    (["--algo", "eap", "--ablation", "zeros"],
     "argument --ablation: unknown ablation 'zeros' (did you mean 'zero'?); choose one of "
     "patching, zero, tokenwise_mean_clean, tokenwise_mean_corrupt, "
     "tokenwise_mean_clean_and_corrupt, batch_tokenwise_mean, batch_all_tok_mean, optimal "
     "(see edgewise discover --help)"),
])  # fmt: skip
def test_refused_before_anything_loads(extra, message, data, tmp_path, capsys, no_loading):
    out = tmp_path / "run"
    able = [a for a, x in ALGORITHMS.items()
            if "ablation_type" in inspect.signature(x.function).parameters]
    loss = [a for a, x in ALGORITHMS.items() if x.loss]
    line = cli_error(["discover", "--task", str(data), *RUN, "--out", str(out), *extra], capsys)
    assert line == "edgewise: error: " + message.format(able=", ".join(able), loss=", ".join(loss))
    assert not out.exists()


def test_choices_reach_the_scores_the_record_and_the_report(data, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["discover", "--task", str(data), *RUN, "--out", str(out), "--algo", "ig", "eap",
            "--param", "ig.steps=2", "--ablation", "zero", "--grad-function", "prob",
            "--answer-function", "avg_val"]  # fmt: skip
    results = api(argv)
    task, pm, train, _ = _setup("toy-ioi", str(data), 4)
    want = mask_gradient_prune_scores(pm, train, None, "prob", "avg_val", integrated_grad_samples=2,
                                      ablation_type="zero", progress=False)  # fmt: skip
    saved, meta = load_prune_scores(out / "scores_ig.safetensors")
    for name in want:
        torch.testing.assert_close(saved[name].double(), want[name].double(), atol=1e-6, rtol=0)
    # every parameter the scores were computed with, defaults included
    ig = results["algorithms"]["ig"]["parameters"]
    assert ig == meta["parameters"] == {
        "grad_function": "prob", "answer_function": "avg_val", "mask_val": None,
        "integrated_grad_samples": 2, "ablation_type": "zero", "clean_corrupt": "corrupt",
        "integrated_grad_mode": "all", "grad_rules": [], "scale": "sum"}
    call = call_parameters("eap", task, quiet=True, ablation="zero", grad_function="prob",
                           answer_function="avg_val")  # fmt: skip
    assert results["algorithms"]["eap"]["parameters"] == effective_parameters("eap", call)
    assert results["n_prompts"] == {"train": 4, "test": 4} and "unfinished" not in results
    # a resumed run with another value is a settings mismatch naming it
    with pytest.raises(ProvenanceError, match=r"parameters.*integrated_grad_samples.*2.*3"):
        api([*argv[:-8], "--param", "ig.steps=3", *argv[-6:]])
    with pytest.raises(ProvenanceError, match=r"parameters.*ablation_type"):
        api([*argv[:-6], "--grad-function", "prob", "--answer-function", "avg_val"])
    # the report shows them, with the prompt counts
    assert main(["report", str(out), "--quiet"]) == 0
    html = (out / "report.html").read_text()
    settings = html[html.index('id="settings"'):html.index("</section>", html.index('id="settings"'))]
    assert "<b>4</b> prompt pairs to score edges" in settings
    assert "<b>4</b> held-out pairs to evaluate circuits" in settings
    blocks = {a: settings[settings.index(f'data-algorithm="{a}"'):] for a in ("ig", "eap")}
    blocks["ig"] = blocks["ig"][:blocks["ig"].index("</table>")]
    blocks["eap"] = blocks["eap"][:blocks["eap"].index("</table>")]
    assert '<th scope="row">integrated_grad_samples</th><td>2</td>' in blocks["ig"]
    for block in blocks.values():
        assert '<th scope="row">ablation_type</th><td>zero</td>' in block
        assert '<th scope="row">grad_function</th><td>prob</td>' in block


def test_positions_on_and_off(data, tmp_path, capsys):
    """A dataset task has no token positions by default: ``--positions`` builds them (no
    MIB JSON then, and a note says how to have it), ``evaluate`` rebuilds the same
    graph; ``--no-positions`` writes the MIB JSON."""
    on = tmp_path / "on"
    capsys.readouterr()
    assert main(["discover", "--task", str(data), *RUN, "--out", str(on), "--positions"]) == 0
    assert "score with --no-positions to have it" in capsys.readouterr().err
    results = json.loads((on / "results.json").read_text())
    assert results["seq_len"] is not None and not (on / "circuit_eap_mib.json").exists()
    assert main(["evaluate", str(on), "--quiet"]) == 0
    assert json.loads((on / "results.json").read_text())["algorithms"]["eap"]["cpr"] == \
        results["algorithms"]["eap"]["cpr"]
    off = tmp_path / "off"
    assert main(["discover", "--task", str(data), *RUN, "--out", str(off), "--no-positions"]) == 0
    assert json.loads((off / "results.json").read_text())["seq_len"] is None
    assert json.loads((off / "circuit_eap_mib.json").read_text())["edges"]


def test_an_interrupted_run_shows_what_is_finished(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    argv = ["discover", "--task", str(data), *RUN, "--out", str(out), "--algo", "eap", "random",
            "norm"]  # fmt: skip

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    real = ALGORITHMS["norm"]
    monkeypatch.setitem(ALGORITHMS, "norm", dataclasses.replace(real, function=interrupted))
    assert main(argv) == 130
    results = json.loads((out / "results.json").read_text())
    assert list(results["algorithms"]) == ["eap", "random"]
    command = "edgewise " + " ".join(argv)
    assert results["unfinished"] == {"algorithms": ["norm"], "command": command}
    note = f"edgewise: not finished: norm (the run was interrupted); to finish, run the same " \
           f"command again: {command}"
    capsys.readouterr()
    assert main(["report", str(out), "--quiet"]) == 0
    assert note in capsys.readouterr().err.splitlines()
    html = (out / "report.html").read_text()
    assert 'data-algorithm="eap"' in html and 'data-algorithm="random"' in html
    assert "Not finished: <b>norm</b>" in html
    assert main(["evaluate", str(out), "--quiet"]) == 0
    assert note in capsys.readouterr().err.splitlines()
    # the same command finishes it
    monkeypatch.setitem(ALGORITHMS, "norm", real)
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["algorithms"]) == ["eap", "random", "norm"]
    assert "unfinished" not in results
    assert main(["report", str(out), "--quiet"]) == 0
    assert "not finished" not in capsys.readouterr().err
