"""The edgewise command line end to end on the shipped toy model, in a temporary folder."""

from __future__ import annotations

import json

import torch

from edgewise.cli import main
from edgewise.io import load_prune_scores


def test_discover_evaluate_report_round_trip(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["discover", "--task", "toy_ioi", "--algo", "eap", "ig", "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "toy_ioi" and results["n_edges"] == 1650
    for algo in ("eap", "ig"):
        r = results["algorithms"][algo]
        assert 0.5 < r["auc"] <= 1.0 and 0.0 < r["cpr"] <= 1.5
        sizes = [s for s, _ in r["measurements"]]
        assert sizes[0] == 0 and sizes[-1] == 1650
        scores, meta = load_prune_scores(out / f"scores_{algo}.safetensors")
        assert meta["algorithm"] == algo and meta["task"] == "toy_ioi"
        assert len(meta["edges"]) == 1650
    summary = capsys.readouterr().out
    assert "eap" in summary and "AUC" in summary

    before = results["algorithms"]["eap"]["measurements"]
    assert main(["evaluate", str(out), "--quiet"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["algorithms"]["eap"]["measurements"] == before  # deterministic

    assert main(["report", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert "<svg" in html and "https://" not in html


def test_unknown_names_list_the_valid_ones(tmp_path, capsys):
    assert main(["discover", "--task", "nope", "--out", str(tmp_path)]) == 2
    assert "toy_ioi" in capsys.readouterr().err
    assert main(["discover", "--task", "toy_ioi", "--algo", "magic", "--out", str(tmp_path)]) == 2
    assert "acdc" in capsys.readouterr().err
    assert main(["discover", "--task", "toy_copy", "--model", "no-such-model",
                 "--out", str(tmp_path)]) == 2
    assert "toy-ioi" in capsys.readouterr().err


def test_scores_are_identical_across_runs(tmp_path):
    for name in ("a", "b"):
        assert main(["discover", "--task", "toy_ioi", "--algo", "eap", "--out",
                     str(tmp_path / name), "--quiet"]) == 0
    a, _ = load_prune_scores(tmp_path / "a" / "scores_eap.safetensors")
    b, _ = load_prune_scores(tmp_path / "b" / "scores_eap.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
