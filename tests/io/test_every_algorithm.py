"""Every registered algorithm through ``edgewise discover`` on the toy IOI model (4 train
and 4 test prompts, no token positions, few circuit sizes; the slow ones cut down with
``--param``): each gets a faithfulness curve from the empty circuit to the full model,
CPR and CMD, an AUC against the official circuit, its parameters and a report section."""

from __future__ import annotations

import dataclasses
import json

import pytest

import edgewise.benchmarks.tasks as tasks
from edgewise.cli import main
from edgewise.prune_algos import ALGORITHMS

pytestmark = pytest.mark.usefixtures("few_circuit_sizes")

QUICK = ["ig.steps=2", "ig-layer.steps=2", "eap-ig-inputs.steps=2", "eap-ig-activations.steps=2",
         "acdc.tau_exps=-2", "acdc.tau_bases=1", "sp.epochs=1", "sp-tree.epochs=1",
         "circuit-probing.epochs=1", "circuit-probing.sizes=5,20",
         # the norm rule needs a HookedTransformer; TransformerLens 4 loads a bridge
         "eap-frozen.grad_rules=attention_pattern"]  # fmt: skip


@pytest.fixture
def small_toy_ioi(monkeypatch):
    """The toy IOI task with 4 + 4 prompts (its official circuit kept)."""
    from edgewise.benchmarks.toy_models import toy_ioi_dataloaders

    def loaders(model, batch_size):
        return toy_ioi_dataloaders(model, batch_size=batch_size, train_test_size=(4, 4),
                                   shuffle=False)  # fmt: skip

    small = dataclasses.replace(tasks.TASKS["toy_ioi"], dataloaders=loaders)
    monkeypatch.setitem(tasks.TASKS, "toy_ioi", small)


def test_every_algorithm_gets_a_curve_cpr_cmd_and_a_report_section(tmp_path, small_toy_ioi):
    out = tmp_path / "run"
    params = [x for p in QUICK for x in ("--param", p)]
    argv = ["discover", "--task", "toy_ioi", "--model", "toy-ioi", "--batch-size", "4", "--quiet",
            "--no-positions", "--out", str(out), "--algo", *ALGORITHMS, *params]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    print({a: round(r["seconds"], 1) for a, r in results["algorithms"].items()})
    results = json.loads((out / "results.json").read_text())
    assert list(results["algorithms"]) == list(ALGORITHMS)
    assert results["n_prompts"] == {"train": 4, "test": 4}
    n = results["n_edges"]
    html = (out / "report.html").read_text() if main(["report", str(out), "--quiet"]) == 0 else ""
    for algo, r in results["algorithms"].items():
        sizes = [s for s, _ in r["measurements"]]
        assert sizes[0] == 0 and sizes[-1] == n, algo  # the empty circuit and the full model
        faith = dict(r["faithfulness"])
        assert faith[0] == 0.0 and faith[n] == 1.0, algo
        assert isinstance(r["cpr"], float) and isinstance(r["cmd"], float), algo
        assert "faithfulness_error" not in r, algo
        assert 0.0 <= r["auc"] <= 1.0, algo
        assert r["parameters"] == json.loads(
            (out / "checkpoints" / f"{algo}.json").read_text())["fingerprint"]["parameters"]
        assert f'data-algorithm="{algo}"' in html and f"</span>{algo}</td>" in html, algo  # its row
        assert (out / f"circuit_{algo}_mib.json").exists(), algo
    assert results["algorithms"]["ground-truth"]["auc"] == 1.0
    assert results["algorithms"]["ig"]["parameters"]["integrated_grad_samples"] == 2
    assert results["algorithms"]["atp-star"]["parameters"]["grad_drop"] is False
